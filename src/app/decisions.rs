//! The policy's answers on the live view: health, resource-check and the exposition.

use super::AppState;
use crate::metrics::LeaseFigures;
use crate::policy::admission::{CheckRequest, ResourceCheck, generations_that_fit, resource_check};
use crate::policy::health::{Health, health};

impl AppState {
    /// The health report now.
    pub fn health(&self) -> Health {
        let view = self.view();
        health(&view.context(&self.config()))
    }

    /// May a generation of `workload` (a checked profile name) start now, and on which GPU?
    /// Read-only: it records nothing but the decision counter.
    pub fn resource_check(&self, request: &CheckRequest, workload: &str) -> ResourceCheck {
        let check = self.decide(request, workload);
        self.metrics.record_decision(check.can_start_generation, check.primary_reason());
        check
    }

    /// The resource-check decision now, without counting it (the caller counts the answer it
    /// gives, once).
    pub(crate) fn decide(&self, request: &CheckRequest, workload: &str) -> ResourceCheck {
        let view = self.view();
        resource_check(&view.context_for(&self.config(), workload), request)
    }

    /// The `/metrics` exposition of the latest snapshot and the live policy values.
    pub fn render_metrics(&self) -> String {
        let view = self.view();
        // Health is a pure function of what is rendered anyway; computing it here keeps the
        // state set consistent with the snapshot in the same scrape.
        let status = view.snapshot.as_ref().map(|_| health(&view.context(&self.config())).status);
        let estimates = self
            .config()
            .profile_names()
            .into_iter()
            .map(|name| {
                let e = view.context_for(&self.config(), name).estimate(false);
                (name.to_owned(), e.source.as_str(), e.gb)
            })
            .collect();
        let that_fit = match view.snapshot {
            Some(_) => self
                .config()
                .profile_names()
                .into_iter()
                .map(|name| (name.to_owned(), generations_that_fit(&view.context_for(&self.config(), name))))
                .collect(),
            None => Vec::new(),
        };
        let figures =
            LeaseFigures { outstanding: view.outstanding.clone(), estimates, waiting: self.waiting(), that_fit };
        self.metrics.render_cached(view.snapshot.as_ref(), &view.live.constraints, status, view.active, &figures)
    }
}
