//! History from Prometheus: the same answer as the embedded store, built from `query_range`
//! over vramguard's own metrics. Each field is the average over its step (`avg_over_time`), so a
//! point means what an embedded bucket means.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{HistoryPoint, HistorySeries};
use crate::time::rfc3339_unix;

/// Shortest averaging window: a step shorter than a typical scrape interval would find no
/// sample in some windows.
const MIN_WINDOW_SECONDS: u64 = 15;

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct PrometheusSource {
    client: reqwest::Client,
    base: String,
    selector: String,
}

#[derive(Deserialize)]
struct Response {
    status: String,
    data: Option<Data>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    result: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    values: Vec<(f64, String)>,
}

/// The nine fields, in order, as PromQL over `{S}` with window `W`.
const QUERIES: [&str; 8] = [
    "100 * avg(avg_over_time(vramguard_cpu_usage_ratio{S}[W]))",
    "avg(avg_over_time(vramguard_memory_used_bytes{S}[W])) / 1073741824",
    "avg(avg_over_time(vramguard_memory_total_bytes{S}[W])) / 1073741824",
    "100 * avg(avg_over_time(vramguard_memory_used_bytes{S}[W])) / avg(avg_over_time(vramguard_memory_total_bytes{S}[W]))",
    "100 * avg(avg_over_time(vramguard_gpu_utilization_ratio{S}[W]))",
    "sum(avg_over_time(vramguard_gpu_memory_used_bytes{S}[W])) / 1048576",
    "sum(avg_over_time(vramguard_gpu_memory_total_bytes{S}[W])) / 1048576",
    "100 * sum(avg_over_time(vramguard_gpu_memory_used_bytes{S}[W])) / sum(avg_over_time(vramguard_gpu_memory_total_bytes{S}[W]))",
];

impl PrometheusSource {
    /// A source for `base` (e.g. `http://127.0.0.1:9090`) and label matchers without braces.
    pub fn new(base: &str, selector: &str, timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { client, base: base.trim_end_matches('/').to_owned(), selector: selector.to_owned() })
    }

    /// History between `start` and `end` (Unix seconds) in at most `max_points` points.
    pub async fn query(&self, start: f64, end: f64, max_points: u32) -> Result<HistorySeries, String> {
        let span = (end - start).max(1.0);
        let step = (span / f64::from(max_points)).ceil().max(1.0) as u64;
        let window = format!("{}s", step.max(MIN_WINDOW_SECONDS));
        let selector = format!("{{{}}}", self.selector);
        let futures = QUERIES.map(|q| {
            let promql = q.replace("{S}", &selector).replace("[W]", &format!("[{window}]"));
            self.range(promql, start, end, step)
        });
        let [a, b, c, d, e, f, g, h] = futures;
        let (cpu, ram_used, ram_total, ram_pct, gpu, vram_used, vram_total, vram_pct) =
            tokio::try_join!(a, b, c, d, e, f, g, h)?;
        // The time axis is every step at which any host series has a value.
        let mut stamps: Vec<i64> = cpu.keys().chain(ram_used.keys()).copied().collect();
        stamps.sort_unstable();
        stamps.dedup();
        let points = stamps
            .iter()
            .map(|t| HistoryPoint {
                ts: *t as f64,
                cpu_percent: cpu.get(t).copied(),
                ram_used_gb: ram_used.get(t).copied(),
                ram_total_gb: ram_total.get(t).copied(),
                ram_percent: ram_pct.get(t).copied(),
                // As in /stats: without a GPU the GPU fields are 0.
                gpu_percent: gpu.get(t).copied().unwrap_or(0.0),
                vram_used_mb: vram_used.get(t).copied().unwrap_or(0.0),
                vram_total_mb: vram_total.get(t).copied().unwrap_or(0.0),
                vram_percent: vram_pct.get(t).copied().unwrap_or(0.0),
                timestamp: rfc3339_unix(*t as f64),
            })
            .collect::<Vec<_>>();
        Ok(HistorySeries { total_count: points.len() as u64, points, resolution_seconds: step as f64 })
    }

    /// One `query_range`, as timestamp → value of its single series.
    async fn range(&self, promql: String, start: f64, end: f64, step: u64) -> Result<BTreeMap<i64, f64>, String> {
        let url = format!("{}/api/v1/query_range", self.base);
        let resp = self
            .client
            .get(&url)
            .query(&[
                ("query", promql.as_str()),
                ("start", &format!("{start:.3}")),
                ("end", &format!("{end:.3}")),
                ("step", &format!("{step}")),
            ])
            .send()
            .await
            .map_err(|e| format!("Prometheus at {} did not answer: {e}", self.base))?;
        let status = resp.status();
        let body: Response = resp
            .json()
            .await
            .map_err(|e| format!("Prometheus at {} answered {status} with no valid JSON: {e}", self.base))?;
        if body.status != "success" {
            return Err(format!(
                "Prometheus at {} answered {status}: {}",
                self.base,
                body.error.unwrap_or_else(|| "error".to_owned())
            ));
        }
        let mut out = BTreeMap::new();
        for series in body.data.map(|d| d.result).unwrap_or_default() {
            for (t, v) in series.values {
                if let Ok(v) = v.parse::<f64>()
                    && v.is_finite()
                {
                    out.insert(t.round() as i64, v);
                }
            }
        }
        Ok(out)
    }
}
