//! Per-resource verdicts, shared by the health report and the admission decision so the two can
//! never disagree about a reading. The boundary rule lives here and only here: a usage at or
//! above its threshold is over it.

use super::Context;
use crate::config::Constraints;
use crate::snapshot::HostStats;

/// The one boundary rule.
pub(crate) fn at_or_above(value: f64, threshold: f64) -> bool {
    value >= threshold
}

/// Whether a projected VRAM fraction stays under the critical threshold.
pub(crate) fn fits_under(projected: f64, critical: f64) -> bool {
    !at_or_above(projected, critical)
}

/// A host reading against its threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HostVerdict {
    /// The fraction read, `None` when the host collector failed.
    pub value: Option<f64>,
    /// The threshold it is judged against.
    pub threshold: f64,
}

impl HostVerdict {
    /// Known and at or above the threshold.
    pub(crate) fn over(&self) -> bool {
        self.value.is_some_and(|v| at_or_above(v, self.threshold))
    }

    /// Known and under the threshold: what admission needs (an unknown reading fails closed).
    pub(crate) fn allows(&self) -> bool {
        self.value.is_some_and(|v| !at_or_above(v, self.threshold))
    }
}

/// CPU busy fraction against `cpu_warning_threshold`.
pub(crate) fn cpu(ctx: &Context<'_>) -> HostVerdict {
    HostVerdict { value: host(ctx).map(|h| h.cpu_usage_ratio), threshold: ctx.constraints.cpu_warning_threshold }
}

/// RAM used fraction against `ram_warning_threshold`.
pub(crate) fn ram(ctx: &Context<'_>) -> HostVerdict {
    HostVerdict { value: host(ctx).map(HostStats::memory_used_ratio), threshold: ctx.constraints.ram_warning_threshold }
}

fn host<'a>(ctx: &Context<'a>) -> Option<&'a HostStats> {
    ctx.snapshot.and_then(|s| s.host.as_ref())
}

/// Whether a generation slot is free; `None` where leases are not tracked.
pub(crate) fn slot_free(ctx: &Context<'_>) -> Option<bool> {
    ctx.active_generations.map(|active| active < ctx.constraints.max_concurrent_generations)
}

/// How a GPU's VRAM use stands against the thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum VramLevel {
    /// Under the warning threshold.
    Normal,
    /// At or above warning, under critical.
    Warning,
    /// At or above critical.
    Critical,
}

/// The level of a VRAM fraction.
pub(crate) fn vram_level(usage: f64, c: &Constraints) -> VramLevel {
    if at_or_above(usage, c.vram_critical_threshold) {
        VramLevel::Critical
    } else if at_or_above(usage, c.vram_warning_threshold) {
        VramLevel::Warning
    } else {
        VramLevel::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boundary_counts_as_over() {
        let c = Constraints::default();
        assert_eq!(vram_level(0.85, &c), VramLevel::Warning);
        assert_eq!(vram_level(0.8499, &c), VramLevel::Normal);
        assert_eq!(vram_level(0.95, &c), VramLevel::Critical);
        assert!(!fits_under(0.95, 0.95));
        assert!(fits_under(0.9499, 0.95));
        let v = HostVerdict { value: Some(0.9), threshold: 0.9 };
        assert!(v.over() && !v.allows());
        let unknown = HostVerdict { value: None, threshold: 0.9 };
        assert!(!unknown.over() && !unknown.allows());
    }
}
