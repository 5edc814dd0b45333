//! Gangs: one generation sharded over several GPUs (Wan's `torchrun --nproc_per_node N`), placed
//! all at once or not at all (issue #24).
//!
//! Each rank needs its own figure on its own GPU ([`super::phases::rank_need_gb`]: rank 0, which
//! alone decodes the video, may need more than the others). A GPU takes a rank when the rank's
//! figure keeps it under the critical threshold, the same whole-life rule as one job's. Placement
//! takes the fitting GPUs by headroom (room left under the threshold after what live leases
//! still owe), most first, and gives rank 0 the roomiest: since rank 0 needs the most, if any
//! assignment fits, this one does. Pinned GPUs (`gpu_indices`) take the ranks in the order given.

use super::admission::{CheckRequest, Findings, Reason};
use super::phases::{self, RankNeed};
use super::verdict::fits_under;
use super::{Context, GpuView, best_gpu, gpu_health};
use crate::limits::MAX_GANG;

/// The GPUs a request pins its ranks to, rank 0 first (fixed capacity, so a request stays `Copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pins {
    len: u8,
    indices: [u32; MAX_GANG as usize],
}

impl Pins {
    /// Pins from a list; `None` when it is longer than a gang may be.
    pub fn new(indices: &[u32]) -> Option<Self> {
        let mut pins = Self::default();
        if indices.len() > pins.indices.len() {
            return None;
        }
        pins.indices[..indices.len()].copy_from_slice(indices);
        pins.len = indices.len() as u8;
        Some(pins)
    }

    /// The pinned indices, rank 0 first.
    pub fn as_slice(&self) -> &[u32] {
        &self.indices[..usize::from(self.len)]
    }
}

/// Where one rank of a gang goes.
#[derive(Debug, Clone, PartialEq)]
pub struct RankPlace {
    /// The rank, 0 first.
    pub rank: u32,
    /// The GPU's NVML index.
    pub index: u32,
    /// Its UUID.
    pub uuid: String,
    /// What the rank reserves there, GiB.
    pub need_gb: f64,
    /// Free VRAM there after reservations, before this rank, GiB.
    pub free_gb: f64,
    /// VRAM use there with the rank, fraction.
    pub projected: f64,
}

/// The outcome of placing a gang.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Placement {
    /// Every rank has a GPU, rank 0 first.
    Fits(Vec<RankPlace>),
    /// Not every rank fits now: the GPUs that would take a rank (roomiest first), how many
    /// ranks could be placed, and the candidates that would not take one (index, headroom GiB),
    /// roomiest first.
    Short { fitting: Vec<u32>, fit: usize, short: Vec<(u32, f64)> },
}

/// Places a gang on `candidates` (healthy GPUs, pins applied); `topology` is the snapshot's
/// (see [`closest`]).
pub(crate) fn place(
    candidates: &[GpuView<'_>],
    need: &GangNeed,
    critical: f64,
    pins: Option<&Pins>,
    topology: &[(u32, u32, u8)],
) -> Placement {
    let ranks = need.gpus as usize;
    let fits = |g: &GpuView<'_>, rank: usize| fits_under(g.projected(need.of(rank)), critical);
    // The GPUs the gang may use, roomiest first (ties to the lower index), split by whether they
    // take an ordinary rank.
    let mut pool: Vec<&GpuView<'_>> =
        candidates.iter().filter(|g| pins.is_none_or(|p| p.as_slice().contains(&g.index))).collect();
    pool.sort_by(|a, b| b.headroom_gb(critical).total_cmp(&a.headroom_gb(critical)).then(a.index.cmp(&b.index)));
    let (fitting, unfit): (Vec<&GpuView<'_>>, Vec<&GpuView<'_>>) =
        pool.into_iter().partition(|g| fits(g, 1.min(ranks - 1)));
    let chosen: Vec<&GpuView<'_>> = match pins {
        Some(p) => p.as_slice().iter().filter_map(|i| candidates.iter().find(|g| g.index == *i)).collect(),
        None => closest(&fitting, ranks, topology, |g| fits(g, 0)),
    };
    let placed = chosen.len() == ranks && chosen.iter().enumerate().all(|(rank, g)| fits(g, rank));
    if placed {
        return Placement::Fits(
            chosen
                .iter()
                .enumerate()
                .map(|(rank, g)| RankPlace {
                    rank: rank as u32,
                    index: g.index,
                    uuid: g.uuid.to_owned(),
                    need_gb: need.of(rank),
                    free_gb: g.free_gb(),
                    projected: g.projected(need.of(rank)),
                })
                .collect(),
        );
    }
    let short: Vec<(u32, f64)> = unfit.iter().map(|g| (g.index, g.headroom_gb(critical))).collect();
    // Enough GPUs take an ordinary rank, but none of them rank 0's larger figure.
    let fit = fitting.len().min(ranks - 1);
    let fitting: Vec<u32> = fitting.iter().map(|g| g.index).collect();
    Placement::Short { fitting, fit, short }
}

/// The `ranks` GPUs of `fitting` (roomiest first) a gang takes: where NVML reports topology, the
/// most closely connected group that holds the whole gang (all under one PCIe switch before
/// several, before one host bridge, before one NUMA node), the roomiest such group when several
/// do, its roomiest GPU rank 0's; otherwise, or when no closer group holds it, the roomiest GPUs.
fn closest<'a, 'g>(
    fitting: &[&'a GpuView<'g>],
    ranks: usize,
    topology: &[(u32, u32, u8)],
    rank0_fits: impl Fn(&GpuView<'_>) -> bool,
) -> Vec<&'a GpuView<'g>> {
    let roomiest = || fitting.iter().copied().take(ranks).collect();
    if topology.is_empty() || ranks < 2 {
        return roomiest();
    }
    for level in [0, 10, 20, 30, 40] {
        // Groups of GPUs connected at `level` or closer: each GPU labelled with its group's first
        // member (the levels nest, so a group is connected pairwise).
        let mut label: Vec<usize> = (0..fitting.len()).collect();
        for &(a, b, _) in topology.iter().filter(|p| p.2 <= level) {
            let at = |index: u32| fitting.iter().position(|g| g.index == index);
            if let (Some(i), Some(j)) = (at(a), at(b)) {
                let (keep, merge) = (label[i].min(label[j]), label[i].max(label[j]));
                label.iter_mut().filter(|l| **l == merge).for_each(|l| *l = keep);
            }
        }
        let mut groups = label.clone();
        groups.sort_unstable();
        groups.dedup();
        let best = groups
            .into_iter()
            .filter_map(|g| {
                // In `fitting`'s order: roomiest first.
                let members: Vec<&'a GpuView<'g>> =
                    (0..fitting.len()).filter(|i| label[*i] == g).map(|i| fitting[i]).take(ranks).collect();
                (members.len() == ranks && rank0_fits(members[0])).then_some(members)
            })
            .max_by(|a, b| room(a).total_cmp(&room(b)));
        if let Some(members) = best {
            return members;
        }
    }
    roomiest()
}

/// Free VRAM of a group of GPUs, GiB.
fn room(gpus: &[&GpuView<'_>]) -> f64 {
    gpus.iter().map(|g| g.free_gb()).sum()
}

/// What a gang needs: its size and each rank's figure, GiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GangNeed {
    /// GPUs (ranks).
    pub(crate) gpus: u32,
    /// Rank 0's figure and every other rank's.
    pub(crate) ranks: RankNeed,
}

impl GangNeed {
    /// What rank `rank` needs.
    pub(crate) fn of(&self, rank: usize) -> f64 {
        self.ranks.of(rank)
    }

    /// "4 GPUs with 40.9 GB each", or with rank 0's own figure where it differs.
    pub(crate) fn describe(&self) -> String {
        let (first, other) = (self.ranks.rank0, self.ranks.other);
        if (first - other).abs() < 0.05 {
            format!("{} GPUs with {other:.1} GB each", self.gpus)
        } else {
            format!("{} GPUs with {first:.1} GB for rank 0 and {other:.1} GB for each other rank", self.gpus)
        }
    }
}

/// The VRAM part of a gang's decision.
pub(super) struct GangVerdict<'a> {
    /// Every rank has a GPU now, within the budget.
    pub(super) ok: bool,
    /// The largest rank's figure (rank 0's), GiB: what the answer reports as required.
    pub(super) required: f64,
    /// The model's figure for rank 0, GiB (the request's `vram_required_gb` aside).
    pub(super) estimate_gb: f64,
    /// Rank 0's GPU, or the roomiest candidate when the gang does not fit.
    pub(super) chosen: Option<GpuView<'a>>,
    /// Where each rank goes when it fits.
    pub(super) ranks: Vec<RankPlace>,
    /// When it does not fit yet: the GPUs that would take one of its ranks now.
    pub(super) fitting: Vec<u32>,
}

/// Decides whether a gang of `req.gpus` ranks fits now; what blocks it goes into `f`.
pub(super) fn check_vram<'a>(ctx: &Context<'a>, req: &CheckRequest, f: &mut Findings) -> GangVerdict<'a> {
    let critical = ctx.constraints.vram_critical_threshold;
    let geometry = req.size.resolve(ctx.workload);
    let model = phases::rank_need_gb(ctx.workload, ctx.settings, req.model_loaded, geometry, req.gpus);
    // `vram_required_gb` is per GPU: every rank gets it.
    let ranks = req.vram_required_gb.map_or(model, |gb| RankNeed { rank0: gb, other: gb });
    let need = GangNeed { gpus: req.gpus, ranks };
    let required = ranks.rank0.max(ranks.other);
    let all = ctx.gpus();
    let pins = req.pins.as_ref();
    let pinned = |i: u32| pins.is_none_or(|p| p.as_slice().contains(&i));
    let unhealthy: Vec<(u32, String)> =
        gpu_health::out_of_placement(ctx.snapshot).into_iter().filter(|(i, _)| pinned(*i)).collect();
    let candidates: Vec<GpuView<'_>> =
        all.iter().filter(|g| pinned(g.index) && !unhealthy.iter().any(|(i, _)| *i == g.index)).copied().collect();
    let mut verdict = GangVerdict {
        ok: false,
        required,
        estimate_gb: model.rank0,
        chosen: best_gpu(&candidates).copied(),
        ranks: vec![],
        fitting: vec![],
    };
    if blocked_outright(ctx, pins, &all, &unhealthy, f) {
        return verdict;
    }
    let visible: Vec<GpuView<'_>> = all.iter().filter(|g| pinned(g.index)).copied().collect();
    if too_few(ctx, req, &need, (&visible, &candidates), &unhealthy, f) {
        return verdict;
    }
    let topology = ctx.snapshot.map_or(&[][..], |s| &s.topology[..]);
    let placed = match place(&candidates, &need, critical, pins, topology) {
        Placement::Fits(ranks) => {
            verdict.chosen = candidates.iter().find(|g| g.index == ranks[0].index).copied();
            verdict.ranks = ranks;
            true
        }
        Placement::Short { fitting, fit, short } => {
            let list = short_list(&short, &fitting, pins, &candidates, ranks.rank0, critical);
            verdict.fitting = fitting;
            f.blocking.push(format!(
                "Not enough free VRAM for this generation (needs {}; {fit} fit: {list})",
                need.describe()
            ));
            f.blocking.extend(unhealthy.into_iter().map(|(_, text)| text));
            false
        }
    };
    let within_budget = required <= ctx.settings.max_vram_usage_gb;
    if !within_budget {
        f.blocking.push(format!(
            "Generation needs {required:.1} GB per GPU, more than max_vram_usage_gb {:.1}",
            ctx.settings.max_vram_usage_gb
        ));
        f.lasting = true;
    }
    verdict.ok = placed && within_budget;
    if !verdict.ok {
        f.reasons.push(Reason::Vram);
        if req.vram_required_gb.is_none() && pins.is_none() {
            f.recommendations.extend(wider(ctx, req, &candidates, critical));
        }
    }
    verdict
}

/// Too few GPUs for the gang: none could hold it even with nothing else running and every fault
/// cleared (lasting: waiting cannot help; faults clear, as an XID's window passes or a reset
/// remaps rows), or too few are healthy now. `gpus` is (visible, healthy) candidates. Returns
/// whether it refused.
fn too_few(
    ctx: &Context<'_>,
    req: &CheckRequest,
    need: &GangNeed,
    (visible, healthy): (&[GpuView<'_>], &[GpuView<'_>]),
    unhealthy: &[(u32, String)],
    f: &mut Findings,
) -> bool {
    let critical = ctx.constraints.vram_critical_threshold;
    if !could_ever_fit(visible, need, critical) {
        let why = if visible.len() < req.gpus as usize {
            format!("needs {}; {} GPUs here", need.describe(), visible.len())
        } else {
            format!("needs {}; not that many GPUs here could hold it even with nothing else running", need.describe())
        };
        f.blocking.push(format!("Not enough GPUs for this generation ({why})"));
        f.reasons.push(Reason::Vram);
        f.lasting = true;
        if req.vram_required_gb.is_none() && req.pins.is_none() {
            f.recommendations.extend(wider(ctx, req, healthy, critical));
        }
        return true;
    }
    if !could_ever_fit(healthy, need, critical) {
        let what = format!("needs {}; {} healthy GPUs here", need.describe(), healthy.len());
        f.block(Reason::NoGpu, format!("Not enough GPUs for this generation ({what})"));
        f.blocking.extend(unhealthy.iter().map(|(_, text)| text.clone()));
        return true;
    }
    false
}

/// The GPUs a gang was short on, for its refusal: each candidate that takes no rank with its
/// room, or (when every one takes an ordinary rank) the one meant for rank 0.
fn short_list(
    short: &[(u32, f64)],
    fitting: &[u32],
    pins: Option<&Pins>,
    candidates: &[GpuView<'_>],
    rank0: f64,
    critical: f64,
) -> String {
    if !short.is_empty() {
        let list: Vec<String> = short.iter().map(|(i, room)| format!("GPU {i} has {room:.1} GB free")).collect();
        return list.join(", ");
    }
    let first = pins.map(|p| p.as_slice()[0]).or(fitting.first().copied());
    first
        .and_then(|i| candidates.iter().find(|g| g.index == i))
        .map(|g| format!("GPU {} has {:.1} GB free, short of rank 0's {rank0:.1}", g.index, g.headroom_gb(critical)))
        .unwrap_or_default()
}

/// Refusals before any placement: no sample yet, a pinned GPU that is not visible (lasting) or
/// has a fault (until it clears). Returns whether one applied.
fn blocked_outright(
    ctx: &Context<'_>,
    pins: Option<&Pins>,
    all: &[GpuView<'_>],
    unhealthy: &[(u32, String)],
    f: &mut Findings,
) -> bool {
    if ctx.snapshot.is_none() {
        f.block(Reason::NoGpu, "No resource sample yet; vramguard is starting".to_owned());
        return true;
    }
    let Some(pins) = pins else { return false };
    let missing: Vec<String> =
        pins.as_slice().iter().filter(|i| !all.iter().any(|g| g.index == **i)).map(u32::to_string).collect();
    if !missing.is_empty() {
        let visible: Vec<String> = all.iter().map(|g| g.index.to_string()).collect();
        f.block(Reason::NoGpu, format!("GPU {} is not visible (visible: {})", missing.join(", "), visible.join(", ")));
        f.lasting = true;
        return true;
    }
    // A pinned GPU with a fault: the gang cannot go there until the fault clears.
    for (_, text) in unhealthy {
        f.block(Reason::NoGpu, text.clone());
    }
    !unhealthy.is_empty()
}

/// A larger gang that would fit now, when one would (each rank then holds a smaller share).
fn wider(ctx: &Context<'_>, req: &CheckRequest, candidates: &[GpuView<'_>], critical: f64) -> Option<String> {
    let geometry = req.size.resolve(ctx.workload);
    [2, 4, 8, 16].into_iter().filter(|n| *n > req.gpus && *n as usize <= candidates.len()).find_map(|n| {
        let ranks = phases::rank_need_gb(ctx.workload, ctx.settings, req.model_loaded, geometry, n);
        let need = GangNeed { gpus: n, ranks };
        let topology = ctx.snapshot.map_or(&[][..], |s| &s.topology[..]);
        matches!(place(candidates, &need, critical, None, topology), Placement::Fits(_))
            .then(|| format!("Shard it over {n} GPUs: it then needs {}, which fits now", need.describe()))
    })
}

/// How many GPUs among `candidates` could hold an ordinary rank with nothing else on them: fewer
/// than the gang needs means waiting cannot help.
pub(crate) fn could_ever_fit(candidates: &[GpuView<'_>], need: &GangNeed, critical: f64) -> bool {
    let empty_fit = |g: &&GpuView<'_>, rank: usize| fits_under(need.of(rank) / g.total_gb, critical);
    let mut by_size: Vec<&GpuView<'_>> = candidates.iter().collect();
    by_size.sort_by(|a, b| b.total_gb.total_cmp(&a.total_gb));
    let ranks = need.gpus as usize;
    by_size.len() >= ranks && by_size.iter().take(ranks).enumerate().all(|(rank, g)| empty_fit(g, rank))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUIDS: [&str; 8] = ["GPU-0", "GPU-1", "GPU-2", "GPU-3", "GPU-4", "GPU-5", "GPU-6", "GPU-7"];

    fn gpu(index: u32, total: f64, used: f64) -> GpuView<'static> {
        GpuView { index, uuid: UUIDS[index as usize], total_gb: total, used_gb: used, reserved_gb: 0.0 }
    }

    fn need(gpus: u32, rank0: f64, other: f64) -> GangNeed {
        GangNeed { gpus, ranks: RankNeed { rank0, other } }
    }

    #[test]
    fn rank_zero_goes_to_the_roomiest_and_the_rest_by_room() {
        let gpus = [gpu(0, 48.0, 10.0), gpu(1, 48.0, 0.0), gpu(2, 48.0, 5.0), gpu(3, 48.0, 40.0)];
        let Placement::Fits(p) = place(&gpus, &need(3, 42.0, 30.0), 0.95, None, &[]) else { panic!() };
        assert_eq!(p.iter().map(|r| (r.rank, r.index)).collect::<Vec<_>>(), [(0, 1), (1, 2), (2, 0)]);
        assert_eq!(p[0].need_gb, 42.0);
        assert_eq!(p[1].need_gb, 30.0);
    }

    #[test]
    fn short_names_the_gpus_that_do_not_fit() {
        let gpus = [gpu(0, 48.0, 0.0), gpu(1, 48.0, 0.0), gpu(2, 48.0, 0.0), gpu(5, 48.0, 14.6)];
        let n = need(4, 40.9, 40.9);
        match place(&gpus, &n, 0.95, None, &[]) {
            Placement::Short { fitting, fit, short } => {
                assert_eq!(fit, 3);
                assert_eq!(fitting, [0, 1, 2]);
                assert_eq!(short.len(), 1);
                assert_eq!(short[0].0, 5);
                assert!((short[0].1 - (0.95 * 48.0 - 14.6)).abs() < 1e-9);
            }
            p => panic!("{p:?}"),
        }
        assert!(could_ever_fit(&gpus, &n, 0.95));
        assert!(!could_ever_fit(&gpus[..3], &n, 0.95), "three GPUs for four ranks");
        let small: Vec<GpuView<'_>> = (0..4).map(|i| gpu(i, 40.0, 0.0)).collect();
        assert!(!could_ever_fit(&small, &n, 0.95), "40.9 on 40 GiB cards");
        assert_eq!(n.describe(), "4 GPUs with 40.9 GB each");
    }

    #[test]
    fn pins_take_the_ranks_in_their_order() {
        let gpus = [gpu(0, 48.0, 0.0), gpu(1, 48.0, 0.0), gpu(2, 48.0, 0.0)];
        let pins = Pins::new(&[2, 0]).unwrap();
        let Placement::Fits(p) = place(&gpus, &need(2, 20.0, 10.0), 0.95, Some(&pins), &[]) else { panic!() };
        assert_eq!(p.iter().map(|r| r.index).collect::<Vec<_>>(), [2, 0]);
        // A pinned GPU that cannot take its rank refuses the gang; another is not tried.
        let busy = [gpu(0, 48.0, 0.0), gpu(1, 48.0, 0.0), gpu(2, 48.0, 40.0)];
        assert!(matches!(place(&busy, &need(2, 20.0, 10.0), 0.95, Some(&pins), &[]), Placement::Short { .. }));
    }

    #[test]
    fn the_closest_group_that_holds_the_gang_wins() {
        // GPU 0 has the least room; by room alone a 4-gang would take 1, 2, 3 and 4, across two
        // PCIe switches (0-3 on one, 4-7 on the other, one NUMA node each).
        let gpus: Vec<GpuView<'_>> = (0..8).map(|i| gpu(i, 48.0, if i == 0 { 4.0 } else { 0.0 })).collect();
        let mut topology = Vec::new();
        for a in 0..8u32 {
            for b in a + 1..8 {
                topology.push((a, b, if a / 4 == b / 4 { 10 } else { 50 }));
            }
        }
        let four = need(4, 30.0, 30.0);
        let indices = |p: Placement| match p {
            Placement::Fits(r) => r.iter().map(|r| r.index).collect::<Vec<_>>(),
            p => panic!("{p:?}"),
        };
        assert_eq!(indices(place(&gpus, &four, 0.95, None, &[])), [1, 2, 3, 4]);
        assert_eq!(indices(place(&gpus, &four, 0.95, None, &topology)), [4, 5, 6, 7]);
        // Six ranks fit no switch: the roomiest six, across both.
        assert_eq!(indices(place(&gpus, &need(6, 30.0, 30.0), 0.95, None, &topology)), [1, 2, 3, 4, 5, 6]);
        // A switch whose GPUs are too full for a rank does not count.
        let busy: Vec<GpuView<'_>> = (0..8).map(|i| gpu(i, 48.0, if i >= 5 { 30.0 } else { 0.0 })).collect();
        assert_eq!(indices(place(&busy, &four, 0.95, None, &topology)), [0, 1, 2, 3]);
    }

    #[test]
    fn rank_zero_larger_than_every_gpu_is_short_by_one() {
        let gpus = [gpu(0, 48.0, 0.0), gpu(1, 48.0, 0.0)];
        match place(&gpus, &need(2, 46.0, 10.0), 0.95, None, &[]) {
            Placement::Short { fit, .. } => assert_eq!(fit, 1),
            p => panic!("{p:?}"),
        }
    }
}
