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

/// `x` with one decimal, as `format!("{x:.1}")` writes it (the figures in sentences).
pub(crate) fn dec1(x: f64) -> Fixed {
    Fixed(x, 1)
}

/// `x` with no decimals, as `format!("{x:.0}")` writes it (percentages in sentences).
pub(crate) fn dec0(x: f64) -> Fixed {
    Fixed(x, 0)
}

/// A number written with a fixed number of decimals (0 to 2), byte for byte as `{:.N}` writes
/// it, without its exact decimal expansion where that cannot matter: a decision writes a
/// dozen such figures into its sentences, and the standard formatter's exact mode was most of
/// their cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fixed(f64, u8);

impl std::fmt::Display for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Fixed(x, decimals) = *self;
        let scale = [1.0, 10.0, 100.0][usize::from(decimals.min(2))];
        let scaled = x * scale;
        // `{:.N}` rounds the exact binary value half to even. The product is within 2^-53 of
        // it relative (1.2e-7 absolute below 1e9), so away from a half it rounds the same way;
        // near one, and for signs, infinities and large values, the standard formatter writes.
        let tie = (scaled - scaled.floor() - 0.5).abs();
        if !(x.is_sign_positive() && scaled < 1e9 && tie > 1e-6) {
            return write!(f, "{:.*}", usize::from(decimals), x);
        }
        let n = scaled.round() as u64;
        let mut buf = [0u8; 24];
        let mut at = buf.len();
        let mut rest = n;
        for i in 0.. {
            if i == decimals && decimals > 0 {
                at -= 1;
                buf[at] = b'.';
            }
            at -= 1;
            buf[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 && i >= decimals {
                break;
            }
        }
        f.write_str(std::str::from_utf8(&buf[at..]).map_err(|_| std::fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written as the standard formatter writes them: every thousandth up to 2,000 (every half
    /// at one decimal and its neighbours), pseudo-random figures of every size, and the edges.
    #[test]
    fn fixed_figures_are_written_as_format_writes_them() {
        let mut xs: Vec<f64> = (0..2_000_000).map(|k| f64::from(k) / 1000.0).collect();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..1_000_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Mantissa and exponent at random: 1e-6 to about 1e12.
            let mantissa = (seed >> 11) as f64 / (1u64 << 53) as f64;
            xs.push(mantissa * 10f64.powi((seed % 19) as i32 - 6));
        }
        xs.extend([0.0, -0.0, -0.04, -1.25, 0.05, 0.15, 0.25, 0.35, 0.45, 2.5, 0.5, 1.5, 999_999_999.95, 1e9, 1e300]);
        xs.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MIN_POSITIVE, f64::EPSILON, 5e-324]);
        for x in xs {
            assert_eq!(dec0(x).to_string(), format!("{x:.0}"), "{x:e}");
            assert_eq!(dec1(x).to_string(), format!("{x:.1}"), "{x:e}");
            assert_eq!(Fixed(x, 2).to_string(), format!("{x:.2}"), "{x:e}");
        }
    }
}
