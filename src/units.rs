//! Units and display rounding. Every `_gb` field of the API is GiB and every `_mb` field MiB, as
//! in the seed; percentages are rounded to 0.1 and GiB to 0.01 for display only.

/// Bytes in a GiB.
pub(crate) const GIB: f64 = 1_073_741_824.0;
/// Bytes in a MiB.
pub(crate) const MIB: f64 = 1_048_576.0;

/// Bytes as GiB.
pub(crate) fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

/// Rounds to one decimal (percentages, MiB).
pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Rounds to two decimals (GiB).
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
