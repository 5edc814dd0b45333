//! Hot paths that must cost next to nothing: rendering `/metrics` for a big box, one admission
//! decision, and the recommendation search.
//!
//!   cargo bench --bench policy

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use vramguard::Config;
use vramguard::Metrics;
use vramguard::snapshot::{GpuStats, Snapshot};
use vramguard::{CheckRequest, generations_that_fit, resource_check};
use vramguard::{Context, gpu_views, recommendation_search};

mod fixture;
use fixture::GIB;

/// 8 GPUs with 4 compute processes each (32 in all), GPU i with 8·i GiB used.
fn big_box() -> Snapshot {
    fixture::snapshot(
        (0..8u32)
            .map(|i| GpuStats {
                utilization_ratio: Some(0.1 * f64::from(i)),
                temperature_celsius: Some(40.0 + f64::from(i)),
                power_watts: Some(300.0 + f64::from(i)),
                ..fixture::h100(i, u64::from(i) * 8, 1000 + i * 10, 4, 2 * GIB)
            })
            .collect(),
    )
}

fn benches(c: &mut Criterion) {
    let snapshot = big_box();
    let config = Config::default();
    let metrics = Metrics::new();
    // A scrape after a new sample, on the production path: the policy's part and the snapshot's
    // series are computed afresh (the sample is new), then the whole text. The sample itself is
    // made outside the timing.
    c.bench_function("render /metrics after a new sample (8 GPUs, 32 processes)", |b| {
        b.iter_batched(
            || std::sync::Arc::new(snapshot.clone()),
            |sample| {
                let policy = metrics.policy_text(Some(&sample), &config.constraints, None, 2, &Default::default());
                black_box(metrics.render_cached(Some(&sample), &std::sync::Arc::new(policy), 0))
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let reservations = [(3u32, 10.0)];
    let ctx = Context {
        snapshot: Some(&snapshot),
        constraints: &config.constraints,
        settings: &config.optimization,
        workload: &config.workload,
        workload_name: "default",
        observed: &[],
        learning: &config.learning,
        gpu_enabled: true,
        outstanding: &reservations,
        overruns: &[],
        active_generations: Some(1),
        store_problem: None,
        now: 1_800_000_000.0,
    };
    c.bench_function("resource-check decision (8 GPUs, fits)", |b| {
        b.iter(|| {
            black_box(resource_check(&ctx, &CheckRequest { vram_required_gb: Some(9.5), ..CheckRequest::default() }))
        })
    });
    c.bench_function("resource-check decision (8 GPUs, refused with search)", |b| {
        b.iter(|| {
            black_box(resource_check(&ctx, &CheckRequest { vram_required_gb: Some(79.0), ..CheckRequest::default() }))
        })
    });
    // One job on four of the eight GPUs (each rank 9.5 GiB), and the per-sample figures of
    // `vramguard_generations_that_fit` and `vramguard_gangs_that_fit` (one GPU, 2, 4, 8).
    c.bench_function("resource-check decision (8 GPUs, a 4-GPU gang that fits)", |b| {
        b.iter(|| {
            let ask = CheckRequest { vram_required_gb: Some(9.5), gpus: 4, ..CheckRequest::default() };
            black_box(resource_check(&ctx, &ask))
        })
    });
    c.bench_function(
        "what fits now: one GPU and gangs of 2, 4, 8 (8 GPUs, limit 2 with 1 active: at most one more each)",
        |b| b.iter(|| black_box([1, 2, 4, 8].map(|n| generations_that_fit(&ctx, n)))),
    );
    let views = gpu_views(&snapshot, |_| 0.0);
    let settings = vramguard::Optimization {
        quantization: vramguard::Quantization::Fp16,
        enable_offload: false,
        vae_tile_size: 512,
        vae_tiling: true,
        max_vram_usage_gb: 80.0,
    };
    // A request that named its size: the settings and a smaller video (5 changes, 10 pairs).
    let geometry = vramguard::Geometry { width: 1280, height: 720, frames: 81 };
    let job = vramguard::Job { settings, geometry, sized: true };
    c.bench_function("recommendation search (5 changes + 10 pairs, 8 GPUs)", |b| {
        b.iter(|| black_box(recommendation_search(&config.workload, &job, false, 60.0, &views, 0.95)))
    });
}

criterion_group!(policy, benches);
criterion_main!(policy);
