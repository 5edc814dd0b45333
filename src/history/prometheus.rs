//! History from Prometheus: the same answer as the embedded store, built from `query_range`
//! over vramguard's own metrics. Each field is the average over its step (`avg_over_time`), so a
//! point means what an embedded bucket means. Each GPU's own figures come from one more query per
//! figure grouped by the `gpu` label (`avg by (gpu)`), merged into the points by timestamp.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{GpuHistoryPoint, HistoryPoint, HistorySeries};
use crate::time::rfc3339_unix;

/// Shortest averaging window: a step shorter than a typical scrape interval would find no
/// sample in some windows.
const MIN_WINDOW_SECONDS: u64 = 15;

/// Where and how to ask.
#[derive(Debug, Clone)]
pub(crate) struct PrometheusSource {
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
    #[serde(default)]
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// One figure over time: timestamp → value.
type Figure = BTreeMap<i64, f64>;
/// One figure per GPU over time: timestamp → GPU index → value.
type FigureByGpu = BTreeMap<i64, BTreeMap<u32, f64>>;

/// Every finite sample of `series` as (labels, timestamp, value).
fn samples(series: Vec<Series>) -> impl Iterator<Item = (BTreeMap<String, String>, i64, f64)> {
    series.into_iter().flat_map(|s| {
        let metric = s.metric;
        s.values.into_iter().filter_map(move |(t, v)| {
            let v = v.parse::<f64>().ok().filter(|v| v.is_finite())?;
            Some((metric.clone(), t.round() as i64, v))
        })
    })
}

/// The answer of an ungrouped query (a single series).
fn single(series: Vec<Series>) -> Figure {
    samples(series).map(|(_, t, v)| (t, v)).collect()
}

/// The answer of a query grouped `by (gpu)`; a series without a numeric `gpu` label is ignored.
fn by_gpu(series: Vec<Series>) -> FigureByGpu {
    let mut out = FigureByGpu::new();
    for (metric, t, v) in samples(series) {
        if let Some(index) = metric.get("gpu").and_then(|g| g.parse::<u32>().ok()) {
            out.entry(t).or_default().insert(index, v);
        }
    }
    out
}

/// The GPUs' figures at `t`, by index: a GPU with either figure at `t` is listed, the figure it
/// lacks is `None`.
fn gpus_at(util: &FigureByGpu, vram: &FigureByGpu, t: i64) -> Vec<GpuHistoryPoint> {
    let (u, v) = (util.get(&t), vram.get(&t));
    let mut indices: Vec<u32> = u.into_iter().chain(v).flat_map(|m| m.keys().copied()).collect();
    indices.sort_unstable();
    indices.dedup();
    indices
        .into_iter()
        .map(|index| GpuHistoryPoint {
            index,
            gpu_percent: u.and_then(|m| m.get(&index)).copied(),
            vram_percent: v.and_then(|m| m.get(&index)).copied(),
        })
        .collect()
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

/// Each GPU's utilization and VRAM %, grouped by the `gpu` label (its NVML index).
const GPU_QUERIES: [&str; 2] = [
    "100 * avg by (gpu) (avg_over_time(vramguard_gpu_utilization_ratio{S}[W]))",
    "100 * avg by (gpu) (avg_over_time(vramguard_gpu_memory_used_bytes{S}[W])) / avg by (gpu) (avg_over_time(vramguard_gpu_memory_total_bytes{S}[W]))",
];

/// The nine fields and the GPUs' figures, each over time.
struct Figures {
    cpu: Figure,
    ram_used: Figure,
    ram_total: Figure,
    ram_pct: Figure,
    gpu: Figure,
    vram_used: Figure,
    vram_total: Figure,
    vram_pct: Figure,
    gpu_util: FigureByGpu,
    gpu_vram: FigureByGpu,
}

impl Figures {
    /// The points: the time axis is every step at which any host series has a value; the GPUs'
    /// figures join the point of their timestamp.
    fn merge(self) -> Vec<HistoryPoint> {
        let mut stamps: Vec<i64> = self.cpu.keys().chain(self.ram_used.keys()).copied().collect();
        stamps.sort_unstable();
        stamps.dedup();
        stamps
            .iter()
            .map(|t| HistoryPoint {
                ts: *t as f64,
                cpu_percent: self.cpu.get(t).copied(),
                ram_used_gb: self.ram_used.get(t).copied(),
                ram_total_gb: self.ram_total.get(t).copied(),
                ram_percent: self.ram_pct.get(t).copied(),
                // As in /stats: without a GPU the GPU fields are 0.
                gpu_percent: self.gpu.get(t).copied().unwrap_or(0.0),
                vram_used_mb: self.vram_used.get(t).copied().unwrap_or(0.0),
                vram_total_mb: self.vram_total.get(t).copied().unwrap_or(0.0),
                vram_percent: self.vram_pct.get(t).copied().unwrap_or(0.0),
                timestamp: rfc3339_unix(*t as f64),
                gpus: gpus_at(&self.gpu_util, &self.gpu_vram, *t),
            })
            .collect()
    }
}

impl PrometheusSource {
    /// A source for `base` (e.g. `http://127.0.0.1:9090`) and label matchers without braces.
    pub(crate) fn new(base: &str, selector: &str, timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { client, base: base.trim_end_matches('/').to_owned(), selector: selector.to_owned() })
    }

    /// History between `start` and `end` (Unix seconds) in at most `max_points` points.
    pub(crate) async fn query(&self, start: f64, end: f64, max_points: u32) -> Result<HistorySeries, String> {
        let span = (end - start).max(1.0);
        let step = (span / f64::from(max_points)).ceil().max(1.0) as u64;
        let window = format!("{}s", step.max(MIN_WINDOW_SECONDS));
        let selector = format!("{{{}}}", self.selector);
        let promql = |q: &str| q.replace("{S}", &selector).replace("[W]", &format!("[{window}]"));
        let [a, b, c, d, e, f, g, h] = QUERIES.map(|q| self.range(promql(q), start, end, step));
        let [i, j] = GPU_QUERIES.map(|q| self.range(promql(q), start, end, step));
        let (cpu, ram_used, ram_total, ram_pct, gpu, vram_used, vram_total, vram_pct, gpu_util, gpu_vram) =
            tokio::try_join!(a, b, c, d, e, f, g, h, i, j)?;
        let points = Figures {
            cpu: single(cpu),
            ram_used: single(ram_used),
            ram_total: single(ram_total),
            ram_pct: single(ram_pct),
            gpu: single(gpu),
            vram_used: single(vram_used),
            vram_total: single(vram_total),
            vram_pct: single(vram_pct),
            gpu_util: by_gpu(gpu_util),
            gpu_vram: by_gpu(gpu_vram),
        }
        .merge();
        Ok(HistorySeries { total_count: points.len() as u64, points, resolution_seconds: step as f64 })
    }

    /// One `query_range`: the series of its answer.
    async fn range(&self, promql: String, start: f64, end: f64, step: u64) -> Result<Vec<Series>, String> {
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
        Ok(body.data.map(|d| d.result).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(json: &str) -> Vec<Series> {
        serde_json::from_str::<Response>(json).unwrap().data.unwrap().result
    }

    /// A grouped answer is read per `gpu` label and merged into the host's points by timestamp:
    /// a GPU without a figure at a step has it `None` (never 0), a series without a `gpu` label
    /// is ignored, and a GPU's step with no host point is dropped like the aggregate's.
    #[test]
    fn gpu_figures_merge_by_timestamp() {
        let util = by_gpu(series(
            r#"{"status":"success","data":{"resultType":"matrix","result":[
                {"metric":{"gpu":"1"},"values":[[100,"71"],[101,"72"],[103,"NaN"]]},
                {"metric":{"gpu":"0"},"values":[[100,"35"],[101,"36"],[102,"37"]]},
                {"metric":{},"values":[[100,"99"]]}]}}"#,
        ));
        let vram = by_gpu(series(
            r#"{"status":"success","data":{"resultType":"matrix","result":[
                {"metric":{"gpu":"0"},"values":[[100.0004,"25"]]},
                {"metric":{"gpu":"1"},"values":[[100,"62.5"],[101,"62.5"]]}]}}"#,
        ));
        let host: Figure = [(100, 10.0), (101, 11.0), (103, 13.0)].into();
        let points = Figures {
            cpu: host.clone(),
            ram_used: Figure::new(),
            ram_total: Figure::new(),
            ram_pct: Figure::new(),
            gpu: single(series(
                r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[100,"53"]]}]}}"#,
            )),
            vram_used: Figure::new(),
            vram_total: Figure::new(),
            vram_pct: Figure::new(),
            gpu_util: util,
            gpu_vram: vram,
        }
        .merge();
        let g = |index, u: Option<f64>, v: Option<f64>| GpuHistoryPoint { index, gpu_percent: u, vram_percent: v };
        let ts: Vec<f64> = points.iter().map(|p| p.ts).collect();
        assert_eq!(ts, vec![100.0, 101.0, 103.0]);
        assert_eq!(points[0].gpu_percent, 53.0);
        assert_eq!(points[0].gpus, vec![g(0, Some(35.0), Some(25.0)), g(1, Some(71.0), Some(62.5))]);
        assert_eq!(points[1].gpus, vec![g(0, Some(36.0), None), g(1, Some(72.0), Some(62.5))]);
        assert_eq!(points[1].gpu_percent, 0.0); // the aggregate's own rule, unchanged
        assert_eq!(points[2].gpus, vec![], "a NaN is no reading");
    }
}
