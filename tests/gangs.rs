//! One generation sharded over several GPUs (a gang, issue #24), against the real binary and the
//! fake NVML: where resource-check would put each rank, the Wan2.2 table's multi-GPU peaks as
//! per-rank figures, and the published out-of-memory setups refused.

mod common;

use common::{GIB, Vramguard};
use serde_json::Value;

/// `n` idle GPUs of `total_gib` each, those in `busy` with that many GiB held.
fn start(n: usize, total_gib: u64, busy: &[(usize, u64)]) -> Vramguard {
    start_with("", n, total_gib, busy)
}

/// [`start`] with more configuration lines.
fn start_with(config: &str, n: usize, total_gib: u64, busy: &[(usize, u64)]) -> Vramguard {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let scenario: String = (0..n)
        .map(|i| {
            let used = busy.iter().find(|(g, _)| *g == i).map_or(0, |(_, u)| u * GIB);
            format!("[gpu]\nmemory_total {}\nmemory_used {used}\n", total_gib * GIB)
        })
        .collect();
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}{config}"), Some(&scenario), &[]);
    vg.wait_ready();
    vg
}

fn check(vg: &Vramguard, query: &str) -> Value {
    let (status, body) = vg.get_json(&format!("/api/v1/system/resource-check?{query}"));
    assert_eq!(status, 200, "{body}");
    body
}

fn indices(answer: &Value) -> Vec<u64> {
    answer["gpus"].as_array().map(|a| a.iter().map(|g| g["index"].as_u64().unwrap()).collect()).unwrap_or_default()
}

const T2V_480P: &str = "workload=wan2.2-t2v-a14b&width=832&height=480";

/// Eight 48 GiB GPUs: a T2V-A14B 480P job on four of them needs the table's 40.9 per GPU, and
/// resource-check names four distinct GPUs, rank 0 first, each with its figure.
#[test]
fn a_gang_is_placed_on_distinct_gpus_with_the_published_figure() {
    let vg = start(8, 48, &[(0, 18)]);
    let a = check(&vg, &format!("{T2V_480P}&gpus=4"));
    assert_eq!(a["can_start_generation"], true, "{a}");
    let ranks = a["gpus"].as_array().unwrap();
    assert_eq!(ranks.len(), 4, "{a}");
    let mut seen = indices(&a);
    assert!(!seen.contains(&0), "GPU 0 has the least room: {a}");
    seen.dedup();
    assert_eq!(seen.len(), 4, "{a}");
    for (rank, r) in ranks.iter().enumerate() {
        assert_eq!(r["rank"], rank as u64);
        let gb = r["vram_required_gb"].as_f64().unwrap();
        assert!((gb - 40.9).abs() / 40.9 < 0.10, "rank {rank}: {gb}");
        assert!(r["uuid"].as_str().unwrap().starts_with("GPU-"));
    }
    assert_eq!(a["gpu"]["index"], ranks[0]["index"], "`gpu` is rank 0's");
    // One GPU answers as before: no `gpus`.
    let one = check(&vg, T2V_480P);
    assert!(one.get("gpus").is_none(), "{one}");
    // Eight ranks hold less each (the table's 26.3): GPU 0, 18 of 48 GiB used, has 27.6 below
    // the 95 % limit and takes one.
    let eight = check(&vg, &format!("{T2V_480P}&gpus=8"));
    assert_eq!(eight["can_start_generation"], true, "{eight}");
    assert_eq!(eight["gpus"].as_array().unwrap().len(), 8);
    let per_rank = eight["vram_required_gb"].as_f64().unwrap();
    assert!((per_rank - 26.3).abs() / 26.3 < 0.10, "{per_rank}");
}

/// The two out-of-memory setups users report are refused at once, as lasting: four 40 GB A100s
/// for I2V-A14B, and eight 32 GB GPUs for T2V-A14B at 720P.
#[test]
fn the_published_out_of_memory_setups_are_refused() {
    let a100s = start(4, 40, &[]);
    for size in ["width=832&height=480", "width=1280&height=720"] {
        let a = check(&a100s, &format!("workload=wan2.2-i2v-a14b&{size}&gpus=4"));
        assert_eq!(a["can_start_generation"], false, "{a}");
        let text = a["blocking_issues"][0].as_str().unwrap();
        assert!(text.starts_with("Not enough GPUs for this generation (needs 4 GPUs with "), "{text}");
        assert!(a.get("gpus").is_none(), "{a}");
    }
    let v100s = start(8, 32, &[]);
    let a = check(&v100s, "workload=wan2.2-t2v-a14b&width=1280&height=720&gpus=8");
    assert_eq!(a["can_start_generation"], false, "{a}");
    let per_rank = a["vram_required_gb"].as_f64().unwrap();
    assert!((per_rank - 37.0).abs() / 37.0 < 0.10, "{per_rank}");
}

/// A gang short of room says which GPUs were short and by how much; pinned GPUs take the ranks
/// in their order; an unknown pin and bad fields are 400s or lasting refusals naming the field.
#[test]
fn refusals_name_the_short_gpus_and_pins_are_kept() {
    let vg = start(4, 48, &[(3, 14)]);
    let a = check(&vg, &format!("{T2V_480P}&gpus=4"));
    assert_eq!(a["can_start_generation"], false, "{a}");
    let text = a["blocking_issues"][0].as_str().unwrap();
    assert!(text.contains("; 3 fit: GPU 3 has 31.6 GB free)"), "{text}");
    assert!(text.starts_with("Not enough free VRAM for this generation (needs 4 GPUs with 4"), "{text}");
    let pinned = check(&vg, &format!("{T2V_480P}&gpus=2&vram_required_gb=30&gpu_indices=2,0"));
    assert_eq!(indices(&pinned), [2, 0], "{pinned}");
    let onto_full = check(&vg, &format!("{T2V_480P}&gpus=2&vram_required_gb=40&gpu_indices=3,0"));
    assert_eq!(onto_full["can_start_generation"], false, "{onto_full}");
    assert!(onto_full["blocking_issues"][0].as_str().unwrap().contains("1 fit: GPU 3 has 31.6 GB free"), "{onto_full}");
    let unknown = check(&vg, &format!("{T2V_480P}&gpus=2&gpu_indices=0,9"));
    assert_eq!(unknown["blocking_issues"][0], "GPU 9 is not visible (visible: 0, 1, 2, 3)", "{unknown}");
    for (query, field) in [
        ("gpus=0", "gpus: 0 is out of range; allowed integers 1 to 16"),
        ("gpus=17", "gpus: 17 is out of range; allowed integers 1 to 16"),
        ("gpus=2&gpu_indices=1", "gpu_indices: 1 indices for 2 GPUs"),
        ("gpus=2&gpu_indices=1,1", "gpu_indices: GPU 1 is listed twice"),
        ("gpus=2&gpu_indices=a,b", "gpu_indices: \"a,b\" is not a list"),
    ] {
        let (status, body) = vg.get_json(&format!("/api/v1/system/resource-check?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["detail"].as_str().unwrap().starts_with(field), "{query}: {body}");
    }
}

/// A smaller gang that does not fit is told the larger one that would.
#[test]
fn a_wider_gang_is_recommended_when_it_fits() {
    let vg = start(8, 32, &[]);
    let a = check(&vg, "workload=wan2.2-t2v-a14b&width=832&height=480&gpus=4");
    assert_eq!(a["can_start_generation"], false, "{a}");
    let recs: Vec<&str> = a["recommendations"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(recs.iter().any(|r| r.starts_with("Shard it over 8 GPUs: it then needs 8 GPUs with 2")), "{recs:?}");
}

/// `vramguard_gangs_that_fit{workload,gpus}` answers for 2, 4 and 8 GPUs where the machine has
/// them: on eight 48 GiB GPUs, T2V-A14B at its default 720P fits neither on one GPU (60.5) nor on
/// two or four (51.7 per rank at four), and once on all eight (37.0 per rank).
#[test]
fn gangs_that_fit_counts_per_gang_size() {
    let vg = start_with("workload: wan2.2-t2v-a14b\n", 8, 48, &[]);
    let m = vg.metrics();
    let fit = |gpus: &str| m.value("vramguard_gangs_that_fit", &[("workload", "default"), ("gpus", gpus)]);
    assert_eq!(fit("2"), Some(0.0), "{}", m.text);
    assert_eq!(fit("4"), Some(0.0));
    assert_eq!(fit("8"), Some(1.0));
    assert_eq!(fit("16"), None, "no series for more GPUs than the machine has");
    assert_eq!(m.value("vramguard_generations_that_fit", &[("workload", "default")]), Some(0.0));
    // Four 80 GiB GPUs: no series for eight; two ranks would need 81 each (half of 117 GiB of
    // fp32 weights and the 720P sequence), four fit once.
    let four = start_with("workload: wan2.2-t2v-a14b\n", 4, 80, &[]);
    let m = four.metrics();
    assert_eq!(m.value("vramguard_gangs_that_fit", &[("gpus", "4")]), Some(1.0), "{}", m.text);
    assert_eq!(m.value("vramguard_gangs_that_fit", &[("gpus", "2")]), Some(0.0));
    assert_eq!(m.value("vramguard_gangs_that_fit", &[("gpus", "8")]), None);
}
