//! The policy's answers on the live view: health, resource-check and the exposition. The
//! resource-check answer and the policy's part of the exposition are kept between changes of
//! their inputs ([`super::answers`]).

use std::sync::Arc;

use bytes::Bytes;
use prometheus::IntCounter;

use super::{AppState, ServiceError};
use crate::metrics::{LeaseFigures, PolicyText};
use crate::policy::admission::{CheckRequest, ResourceCheck, generations_that_fit, resource_check};
use crate::policy::health::{Health, health};
use crate::snapshot::Snapshot;

/// A resource-check answer as it is sent: its JSON, and the decision counter it counts under.
#[derive(Clone)]
pub struct CheckAnswer {
    json: Bytes,
    counter: IntCounter,
}

impl AppState {
    /// The health report now.
    pub fn health(&self) -> Health {
        let view = self.view();
        health(&view.context(&self.config()))
    }

    /// The resource-check answer to `question` (the raw query string) as JSON, counted. The
    /// same question under the same inputs gets the kept answer; otherwise `parse` turns the
    /// question into a request and a checked workload (or the refusal of a bad one, which is
    /// not kept) and the policy decides.
    pub fn resource_check_json(
        &self,
        question: &str,
        parse: impl FnOnce(&AppState) -> Result<(CheckRequest, String), ServiceError>,
    ) -> Result<Bytes, ServiceError> {
        let stamp = self.stamp();
        if let Some(kept) = self.kept_checks.get(&stamp, question) {
            self.metrics.count(&kept.counter);
            return Ok(kept.json);
        }
        let (request, workload) = parse(self)?;
        // Before deciding: the first expiry among the leases the decision may see.
        let valid_until = self.answers_valid_until();
        let check = self.decide(&request, &workload);
        let json = Bytes::from(serde_json::to_vec(&check).map_err(|e| ServiceError::failed("resource-check", e))?);
        let counter = self.metrics.decision_counter(check.can_start_generation, check.primary_reason());
        self.metrics.count(&counter);
        self.kept_checks.put(stamp, question, CheckAnswer { json: json.clone(), counter }, valid_until);
        Ok(json)
    }

    /// The resource-check decision now, without counting it (the caller counts the answer it
    /// gives, once).
    pub(crate) fn decide(&self, request: &CheckRequest, workload: &str) -> ResourceCheck {
        let view = self.view();
        resource_check(&view.context_for(&self.config(), workload), request)
    }

    /// The `/metrics` exposition of the latest snapshot and the live policy values.
    pub fn render_metrics(&self) -> Bytes {
        let stamp = self.stamp();
        // Health also follows the store, and the queue's length is not a decision input.
        let waiting = self.waiting();
        let question = format!("{waiting} {}", self.store_status.problem().unwrap_or_default());
        if let Some(policy) = self.kept_policy.get(&stamp, &question) {
            // Kept under this stamp, so decided on its snapshot.
            return self.metrics.render_cached(stamp.snapshot(), &policy, self.store_status.write_errors());
        }
        let valid_until = self.answers_valid_until();
        let (policy, snapshot) = self.policy_text(waiting);
        let policy = Arc::new(policy);
        self.kept_policy.put(stamp, &question, Arc::clone(&policy), valid_until);
        self.metrics.render_cached(snapshot.as_ref(), &policy, self.store_status.write_errors())
    }

    /// The policy's part of the exposition, computed on the view now with `waiting` requests in
    /// the queue, and the snapshot it saw.
    fn policy_text(&self, waiting: usize) -> (PolicyText, Option<Arc<Snapshot>>) {
        let view = self.view();
        let config = self.config();
        // Health is a pure function of what is rendered anyway; computing it here keeps the
        // state set consistent with the snapshot in the same scrape.
        let status = view.snapshot.as_ref().map(|_| health(&view.context(&config)).status);
        let estimates = config
            .profile_names()
            .into_iter()
            .map(|name| {
                let e = view.context_for(&config, name).estimate(false);
                (name.to_owned(), e.source.as_str(), e.gb)
            })
            .collect();
        let that_fit = match view.snapshot {
            Some(_) => config
                .profile_names()
                .into_iter()
                .map(|name| (name.to_owned(), generations_that_fit(&view.context_for(&config, name))))
                .collect(),
            None => Vec::new(),
        };
        let figures = LeaseFigures { outstanding: view.outstanding.clone(), estimates, waiting, that_fit };
        let text =
            self.metrics.policy_text(view.snapshot.as_deref(), &view.live.constraints, status, view.active, &figures);
        (text, view.snapshot)
    }
}
