//! What still fits right now, for autoscalers and dashboards: how many more generations of a
//! workload's current estimate admission would grant, one after another, on one GPU each or
//! sharded over several.

use super::Context;
use super::admission::{CheckRequest, resource_check};

/// Most generations [`generations_that_fit`] counts: above any `max_concurrent_generations`, so
/// it only bounds a GPU-less host with no VRAM to run out of.
pub(crate) const FIT_COUNT_CAP: u32 = 1024;

/// Gang sizes `vramguard_gangs_that_fit` answers for, where the machine has that many GPUs.
pub(crate) const GANG_SIZES: [u32; 3] = [2, 4, 8];

/// How many more generations of the context's workload on `gpus` GPUs each (its current
/// estimate, per rank for a gang; model not loaded) would be admitted right now: each placed
/// where admission would put it, its VRAM then owed on its GPUs and one slot taken, until a
/// decision refuses. 0 when CPU or RAM refuse or the estimate exceeds `max_vram_usage_gb`.
pub fn generations_that_fit(ctx: &Context<'_>, gpus: u32) -> u32 {
    let mut outstanding: Vec<(u32, f64)> = ctx.outstanding.to_vec();
    let mut active = ctx.active_generations;
    let request = CheckRequest { gpus, ..CheckRequest::default() };
    let mut n = 0;
    while n < FIT_COUNT_CAP {
        let next = Context { outstanding: &outstanding, active_generations: active, ..*ctx };
        let check = resource_check(&next, &request);
        if !check.can_start_generation {
            break;
        }
        if check.ranks.is_empty() {
            outstanding.extend(check.gpu.as_ref().map(|g| (g.index, check.required_gb)));
        } else {
            outstanding.extend(check.ranks.iter().map(|r| (r.index, r.need_gb)));
        }
        active = active.map(|a| a + 1);
        n += 1;
    }
    n
}
