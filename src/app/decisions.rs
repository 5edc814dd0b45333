//! The policy's answers on the live view: health, resource-check and the exposition. The
//! resource-check answer and the policy's part of the exposition are kept between changes of
//! their inputs ([`super::decision_memo`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::IntCounter;

use super::decision_memo::{Asked, Kept};
use super::error::ServiceError;
use super::inputs::Inputs;
use super::queue::Queue;
use crate::metrics::{LeaseFigures, Metrics, PolicyText};
use crate::policy::admission::{CheckRequest, ResourceCheck};
use crate::policy::estimate::Estimate;
use crate::policy::fit::{GANG_SIZES, generations_that_fit};
use crate::policy::health::{Health, health};
use crate::policy::phases::{self, Geometry};
use crate::snapshot::Snapshot;

/// One workload profile as `GET /workloads` lists it.
#[derive(Debug, Clone)]
pub(crate) struct WorkloadSummary {
    /// The name requests select it by.
    pub name: String,
    /// What it describes.
    pub description: String,
    /// It is one of vramguard's built-in profiles, unchanged.
    pub built_in: bool,
    /// Its default video size.
    pub geometry: Geometry,
    /// vramguard's estimate of one generation at that size under the live settings.
    pub estimate: Estimate,
    /// Host RAM offloading needs under the live settings, GiB (0 without offload).
    pub offload_host_ram_gb: f64,
}

/// A resource-check answer as it is sent: its JSON, and the decision counter it counts under.
#[derive(Clone)]
pub(crate) struct CheckAnswer {
    json: Bytes,
    counter: IntCounter,
}

/// Health, resource-check and the exposition, with the decisions kept between changes of
/// their inputs.
pub(crate) struct Decisions {
    inputs: Arc<Inputs>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    /// Resource-check answers kept between changes of their inputs, for the questions asked
    /// lately before.
    kept_checks: Kept<CheckAnswer>,
    asked_checks: Asked,
    /// The policy's part of the exposition, kept likewise.
    kept_policy: Kept<Arc<PolicyText>>,
    /// When `/metrics` was last asked for, and the time between the last two scrapes.
    scrapes: Mutex<Scrapes>,
}

/// The scrape rhythm, as seen from here.
#[derive(Default)]
struct Scrapes {
    last: Option<Instant>,
    period: Option<Duration>,
}

impl Scrapes {
    /// Whether the next scrape (the last one plus the last period) comes before `now +
    /// sample_interval`, and the scraper has not stopped (`now` within a period past it).
    fn due(&self, now: Instant, sample_interval: Duration) -> bool {
        let (Some(last), Some(period)) = (self.last, self.period) else { return false };
        let next = last + period;
        next <= now + sample_interval && now <= next + period
    }
}

impl Decisions {
    pub(crate) fn new(inputs: Arc<Inputs>, queue: Arc<Queue>, metrics: Arc<Metrics>) -> Self {
        Self {
            inputs,
            queue,
            metrics,
            kept_checks: Kept::default(),
            asked_checks: Asked::default(),
            kept_policy: Kept::default(),
            scrapes: Mutex::default(),
        }
    }

    /// Every workload profile with its default job and vramguard's estimate of it under the
    /// live settings, `default` first.
    pub(crate) fn workloads(&self) -> Vec<WorkloadSummary> {
        let view = self.inputs.view();
        let config = self.inputs.config();
        config
            .profile_names()
            .into_iter()
            .filter_map(|name| {
                let profile = config.profile(name)?;
                let ctx = view.context_for(&config, name);
                let estimate = ctx.estimate(false, None);
                Some(WorkloadSummary {
                    name: name.to_owned(),
                    description: profile.name.clone(),
                    built_in: crate::config::profiles::get(name).is_some_and(|b| b == profile),
                    geometry: Geometry::of(profile),
                    estimate,
                    offload_host_ram_gb: phases::host_ram_gb(profile, ctx.settings),
                })
            })
            .collect()
    }

    /// The health report now.
    pub(crate) fn health(&self) -> Health {
        let view = self.inputs.view();
        health(&view.context(&self.inputs.config()))
    }

    /// The resource-check answer to `question` (the raw query string) as JSON, counted. A
    /// question asked again under the same inputs gets the kept answer; otherwise `parse` turns the
    /// question into a request and a workload name (or the refusal of a bad one, which is not
    /// kept), the policy decides, and `render` writes the answer's JSON (the HTTP edge owns its
    /// shape).
    pub(crate) fn resource_check_json(
        &self,
        question: &str,
        parse: impl FnOnce() -> Result<(CheckRequest, Option<String>), ServiceError>,
        render: impl FnOnce(&ResourceCheck) -> Result<Vec<u8>, serde_json::Error>,
    ) -> Result<Bytes, ServiceError> {
        let stamp = self.inputs.stamp();
        if let Some(kept) = self.kept_checks.get(&stamp, question) {
            self.metrics.count(&kept.counter);
            return Ok(kept.json);
        }
        let (request, workload) = parse()?;
        let workload = self.inputs.check_workload(workload.as_deref())?;
        // Before deciding: the first expiry among the leases the decision may see.
        let now = crate::time::now_unix();
        let valid_until = self.inputs.book.valid_until(now);
        let check = self.inputs.decide_on(&stamp, &request, workload, now);
        let json = Bytes::from(render(&check).map_err(|e| ServiceError::failed("resource-check", e))?);
        let counter = self.metrics.decision_counter(check.can_start_generation, check.primary_reason());
        self.metrics.count(&counter);
        if self.asked_checks.again(question) {
            self.kept_checks.put(stamp, question, CheckAnswer { json: json.clone(), counter }, valid_until);
        }
        Ok(json)
    }

    /// A scrape: the `/metrics` exposition of the latest snapshot and the live policy values.
    pub(crate) fn scrape(&self) -> Bytes {
        let now = Instant::now();
        {
            let mut s = self.scrapes.lock().unwrap_or_else(PoisonError::into_inner);
            s.period = s.last.map(|last| now.duration_since(last));
            s.last = Some(now);
        }
        self.render_metrics()
    }

    /// Whether a scrape is due before the sample after this one (`sample_interval` from now), by
    /// the rhythm of the last two: then the sample now is the one it will read, and rendering it
    /// ahead takes the work off that scrape's path. Nobody scraping (or a scraper that stopped for
    /// longer than its own period) means no rendering ahead, so an idle vramguard stays idle.
    pub(crate) fn scrape_due(&self, sample_interval: Duration) -> bool {
        self.scrapes.lock().unwrap_or_else(PoisonError::into_inner).due(Instant::now(), sample_interval)
    }

    /// Renders the exposition now, kept as a scrape keeps it (the sample follower's render ahead).
    pub(crate) fn render_metrics(&self) -> Bytes {
        let stamp = self.inputs.stamp();
        let status = &self.inputs.store_status;
        // Health also follows the store, and the queue's length is not a decision input.
        let waiting = self.queue.waiting();
        let question = format!("{waiting} {}", status.problem().unwrap_or_default());
        if let Some(policy) = self.kept_policy.get(&stamp, &question) {
            // Kept under this stamp, so decided on its snapshot.
            return self.metrics.render_cached(stamp.snapshot(), &policy, status.write_errors());
        }
        let valid_until = self.inputs.book.valid_until(crate::time::now_unix());
        let (policy, snapshot) = self.policy_text(waiting);
        let policy = Arc::new(policy);
        self.kept_policy.put(stamp, &question, Arc::clone(&policy), valid_until);
        self.metrics.render_cached(snapshot.as_ref(), &policy, status.write_errors())
    }

    /// The policy's part of the exposition, computed on the view now with `waiting` requests in
    /// the queue, and the snapshot it saw.
    fn policy_text(&self, waiting: usize) -> (PolicyText, Option<Arc<Snapshot>>) {
        let view = self.inputs.view();
        let config = self.inputs.config();
        // Health is a pure function of what is rendered anyway; computing it here keeps the
        // state set consistent with the snapshot in the same scrape.
        let status = view.snapshot.as_ref().map(|_| health(&view.context(&config)).status);
        // The profiles the operator set up; a built-in one joins once `workloads` names it.
        let estimates = config
            .configured_profile_names()
            .into_iter()
            .map(|name| {
                let e = view.context_for(&config, name).estimate(false, None);
                (name.to_owned(), e.source.as_str(), e.gb)
            })
            .collect();
        let that_fit = match view.snapshot {
            Some(_) => config
                .configured_profile_names()
                .into_iter()
                .map(|name| (name.to_owned(), generations_that_fit(&view.context_for(&config, name), 1)))
                .collect(),
            None => Vec::new(),
        };
        let gpus = view.snapshot.as_ref().map_or(0, |s| s.gpus.len());
        let gangs_that_fit = config
            .configured_profile_names()
            .into_iter()
            .flat_map(|name| GANG_SIZES.into_iter().filter(|n| *n as usize <= gpus).map(move |n| (name, n)))
            .map(|(name, n)| (name.to_owned(), n, generations_that_fit(&view.context_for(&config, name), n)))
            .collect();
        let held: std::collections::BTreeSet<u32> = view.leases.iter().filter_map(|(l, _)| l.gpu_index).collect();
        let gpus_leased = held.len() as u32;
        let figures = LeaseFigures {
            outstanding: view.outstanding.clone(),
            estimates,
            waiting,
            that_fit,
            gangs_that_fit,
            gpus_leased,
        };
        let text =
            self.metrics.policy_text(view.snapshot.as_deref(), &view.live.constraints, status, view.active, &figures);
        (text, view.snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_due_by_the_rhythm_of_the_last_two() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let every = |period: u64| Scrapes { last: Some(t0), period: Some(Duration::from_secs(period)) };
        // Nobody scraped twice yet: nothing is rendered ahead.
        assert!(!Scrapes::default().due(t0, second));
        assert!(!Scrapes { last: Some(t0), period: None }.due(t0, second));
        // Every 15 s: due from 14 s on (the sample then is the one the scrape at 15 s reads).
        assert!(!every(15).due(t0 + Duration::from_secs(13), second));
        assert!(every(15).due(t0 + Duration::from_secs(14), second));
        assert!(every(15).due(t0 + Duration::from_secs(20), second));
        // A scraper silent for more than its own period after the scrape it owed has stopped.
        assert!(!every(15).due(t0 + Duration::from_secs(31), second));
        // Scraping faster than sampling: every sample is due.
        assert!(every(1).due(t0 + Duration::from_millis(500), second));
    }
}
