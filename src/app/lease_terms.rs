//! The terms of a lease, apart from the ledger that keeps them: what a client asks for and the
//! checks on it, how a request and a release end, whose lease it is, and the observation a lease
//! leaves when it ends.

use super::access::Caller;
use super::error::ServiceError;
use crate::leases::{Lease, is_valid_id};
use crate::limits;
use crate::policy::admission::{CheckRequest, ResourceCheck};
use crate::store::Observation;

/// What a client asks for when it takes a lease.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LeaseAsk {
    /// VRAM the job needs, GiB; `None` uses the workload estimate.
    pub vram_required_gb: Option<f64>,
    /// The worker already holds its model.
    pub model_loaded: bool,
    /// Only this GPU index may be used.
    pub gpu: Option<u32>,
    /// Lifetime, seconds; `None` uses `leases.default_ttl`.
    pub ttl_seconds: Option<u64>,
    /// Who holds the lease.
    pub client: Option<String>,
    /// Processes doing the job (1-64 positive integers), or none.
    pub pids: Option<Vec<u32>>,
    /// Workload profile name; `None` is `default`.
    pub workload: Option<String>,
    /// The name of the token asking (recorded as the lease's owner); `None` without tokens.
    pub owner: Option<String>,
}

impl LeaseAsk {
    /// The resource-check question this request asks.
    pub(crate) fn request(&self) -> CheckRequest {
        CheckRequest { vram_required_gb: self.vram_required_gb, model_loaded: self.model_loaded, gpu: self.gpu }
    }

    /// Checks every field against its limit; the error names the field.
    pub(crate) fn validate(&self) -> Result<(), ServiceError> {
        if let Some(v) = self.vram_required_gb {
            limits::check_required_gb(v).map_err(|m| invalid("vram_required_gb", m))?;
        }
        check_ttl(self.ttl_seconds)?;
        if let Some(c) = &self.client {
            limits::check_client(c).map_err(|m| invalid("client", m))?;
        }
        if let Some(p) = &self.pids {
            limits::check_pids(p).map_err(|m| invalid("pids", m))?;
        }
        Ok(())
    }
}

/// How a release ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Released {
    /// Out of the book and out of the store.
    Durable,
    /// Out of the book (its slot is free), but the store did not take the write, for the reason
    /// given; it is retried until the store does.
    InMemory(String),
}

/// The outcome of a lease request.
#[derive(Debug, Clone)]
pub(crate) enum Acquired {
    /// Admitted: the lease and the decision that admitted it.
    Granted(Box<Lease>, ResourceCheck),
    /// Refused: the decision that refused it.
    Refused(ResourceCheck),
}

pub(super) fn invalid(field: &str, message: String) -> ServiceError {
    ServiceError::Invalid(format!("{field}: {message}"))
}

pub(super) fn check_ttl(ttl: Option<u64>) -> Result<(), ServiceError> {
    match ttl {
        Some(t) => limits::check_ttl_seconds(t).map_err(|m| invalid("ttl_seconds", m)),
        None => Ok(()),
    }
}

/// Why a lease ended, for the observation it leaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum End {
    /// Released, with the client's own peak if it sent one.
    Released(Option<f64>),
    /// Expired without a release.
    Expired,
}

/// The observation a lease's end records: the client's peak when given, else vramguard's NVML
/// peak of its pids; nothing for a lease without either.
pub(super) fn observation(lease: &Lease, end: End, now: f64) -> Option<Observation> {
    let (peak, source) = match (end, lease.vram_peak_gb) {
        (End::Released(Some(p)), _) => (p, "client"),
        (_, Some(p)) if !lease.pids.is_empty() => (p, "nvml"),
        _ => return None,
    };
    Some(Observation { key: lease.grant.clone(), peak_vram_gb: peak, source: source.to_owned(), recorded_at: now })
}

pub(super) fn check_id(id: &str) -> Result<(), ServiceError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ServiceError::NotFound(format!("no lease with id {id:?}; lease ids are 32 lowercase hex digits")))
    }
}

pub(super) fn no_live_lease(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no live lease with id {id}; it was released or expired"))
}

pub(super) fn store_failed(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::store(e)
}

/// Clients act on their own leases only; admins (and everyone while vramguard has no tokens) on
/// any. `what` is the verb for the answer.
pub(super) fn check_owner(caller: &Caller, lease: &Lease, what: &str) -> Result<(), ServiceError> {
    if caller.may_act_on(lease.owner.as_deref()) {
        return Ok(());
    }
    let whose = match &lease.owner {
        Some(owner) => format!("belongs to token {owner:?}"),
        None => "was taken while vramguard had no tokens, so it has no owner".to_owned(),
    };
    Err(ServiceError::Forbidden(format!(
        "lease {} {whose}; {} may {what} only its own leases (an admin token may {what} any)",
        lease.id,
        caller.describe()
    )))
}
