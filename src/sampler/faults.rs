//! GPU fault readings on the collector's pass: volatile ECC counts, row remapping, clock event
//! (throttle) reasons and clocks. XID events arrive on their own thread (`xid.rs`).
//!
//! Each reading goes through the GPU collector's `optional`: a board that does not support it
//! (ECC on consumer cards, row remapping before Ampere) leaves it `None`, which is omitted
//! downstream and never makes the GPU unhealthy; a lost GPU fails the whole device.

use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError};
use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};
use nvml_wrapper::{Device, Nvml};

use super::gpu::optional;
use crate::snapshot::{GpuFaults, RemappedRows};

/// Reads every fault reading of `device`; XIDs are filled in by the collector afterwards.
pub(super) fn read(nvml: &Nvml, device: &Device<'_>) -> Result<GpuFaults, NvmlError> {
    // With ECC switched off the counters mean nothing: report them only while it is on.
    let ecc_on = optional(device.is_ecc_enabled())?.is_some_and(|m| m.currently_enabled);
    let (ecc_corrected, ecc_uncorrected) = if ecc_on {
        (
            optional(device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile))?,
            optional(device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile))?,
        )
    } else {
        (None, None)
    };
    Ok(GpuFaults {
        ecc_corrected,
        ecc_uncorrected,
        remapped_rows: optional(remapped_rows(nvml, device))?,
        throttle_reasons: optional(device.current_throttle_reasons())?.map(|r| r.bits()),
        sm_clock_hz: optional(device.clock_info(Clock::SM))?.map(mhz_to_hz),
        memory_clock_hz: optional(device.clock_info(Clock::Memory))?.map(mhz_to_hz),
        xids: Vec::new(),
    })
}

/// `nvmlDeviceGetRemappedRows`, which nvml-wrapper 0.13 has no safe method for. The symbol is
/// resolved through `nvml_sym` so a driver without it (before R450) is `FailedToLoadSymbol`, an
/// unsupported reading, rather than the panic `NvmlLib::nvmlDeviceGetRemappedRows` would be.
#[allow(unsafe_code)]
fn remapped_rows(nvml: &Nvml, device: &Device<'_>) -> Result<RemappedRows, NvmlError> {
    let sym = nvml_sym(nvml.lib().nvmlDeviceGetRemappedRows.as_ref())?;
    let (mut correctable, mut uncorrectable, mut pending, mut failed) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: `device` is a live handle of `nvml` (the borrow keeps NVML initialised), the
    // symbol has the C signature nvml.h declares (device, four unsigned int outputs), and the
    // four pointers are to distinct locals that outlive the call.
    let code = unsafe { sym(device.handle(), &mut correctable, &mut uncorrectable, &mut pending, &mut failed) };
    nvml_try(code)?;
    Ok(RemappedRows { correctable, uncorrectable, pending: pending != 0, failed: failed != 0 })
}

/// NVML reports clocks in MHz.
pub(crate) fn mhz_to_hz(mhz: u32) -> u64 {
    u64::from(mhz) * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_in_hertz() {
        assert_eq!(mhz_to_hz(1980), 1_980_000_000);
        assert_eq!(mhz_to_hz(0), 0);
    }
}
