//! The history query: 24 h of samples at a 5 s interval (17,280 points, two GPUs each) averaged
//! into 1,000 buckets, as a chart asks for it. Prints the store's size for that day of history.
//!
//!   cargo bench --bench history

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use vramguard::Store;
use vramguard::{GpuHistoryPoint, HistoryPoint};

const DAY: f64 = 86_400.0;
const INTERVAL: f64 = 5.0;

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let end = 1_800_000_000.0;
    let start = end - DAY;
    let n = (DAY / INTERVAL) as u32; // 17,280
    for i in 0..n {
        let t = start + f64::from(i) * INTERVAL + INTERVAL;
        let wave = (f64::from(i) / 100.0).sin();
        let p = HistoryPoint {
            ts: t,
            cpu_percent: Some(40.0 + 20.0 * wave),
            ram_used_gb: Some(20.0 + wave),
            ram_total_gb: Some(62.7),
            ram_percent: Some(32.0 + wave),
            gpu_percent: 60.0 + 30.0 * wave,
            vram_used_mb: 12_000.0 + 2_000.0 * wave,
            vram_total_mb: 16_376.0,
            vram_percent: 73.0 + 12.0 * wave,
            timestamp: String::new(),
            gpus: (0..2)
                .map(|index| GpuHistoryPoint {
                    index,
                    gpu_percent: Some(60.0 + 30.0 * wave),
                    vram_percent: Some(73.0 + 12.0 * wave),
                })
                .collect(),
        };
        // Each sample is its own durable transaction, as the recorder writes them.
        store.record_history(&p, 0.0).unwrap();
    }
    let bytes = store.size_bytes();
    let db = std::fs::metadata(store.path()).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "store size after one day at {INTERVAL} s: {bytes} bytes ({:.2} MiB): database {:.2} MiB, write-ahead log {:.2} MiB",
        bytes as f64 / 1_048_576.0,
        db as f64 / 1_048_576.0,
        (bytes - db) as f64 / 1_048_576.0
    );

    let reader = store.reader().unwrap();
    let series = reader.query_history(start, end, 1000, INTERVAL).unwrap();
    assert_eq!(series.total_count, u64::from(n));
    assert_eq!(series.points.len(), 1000);
    c.bench_function("history: 17,280 points into 1,000 buckets", |b| {
        b.iter(|| black_box(reader.query_history(start, end, 1000, INTERVAL).unwrap()))
    });
    c.bench_function("history: last hour unbucketed (720 points)", |b| {
        b.iter(|| black_box(reader.query_history(end - 3600.0, end, 1000, INTERVAL).unwrap()))
    });
}

criterion_group!(history, benches);
criterion_main!(history);
