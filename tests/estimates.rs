//! Estimates of the job actually asked for (issue #23), against the real binary and the fake
//! NVML: the README's table of published Wan peaks, decisions at 480P and 720P on GPUs of
//! different sizes, whole-frame against tiled VAE decode, and host RAM for offloading.

mod common;

use std::time::Duration;

use common::{GIB, Host, Vramguard};
use serde_json::{Value, json};

/// One GPU of `total_gib` with `used_mib` held by another process, and a scripted host with
/// `ram_gib` of RAM (all but 4 GiB of it available).
fn start(total_gib: u64, used_mib: u64, ram_gib: u64) -> Vramguard {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let used = used_mib << 20;
    let scenario = format!("[gpu]\nmemory_total {}\nmemory_used {used}\nprocess 7 {used}\n", total_gib * GIB);
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}"), Some(&scenario), &[]);
    vg.set_host(Host { cpu: 0.1, total: ram_gib * GIB, available: (ram_gib - 4) * GIB });
    vg.wait_ready();
    vg.wait_until("the scripted host", Duration::from_secs(10), || {
        let (_, s) = vg.get_json("/api/v1/system/stats");
        (s["ram_total_gb"].as_f64().unwrap_or(0.0) - ram_gib as f64).abs() < 0.05
    });
    vg
}

fn whole_frames(vg: &Vramguard) {
    let (status, body) = vg.post_json("/api/v1/system/optimization", &json!({"vae_tiling": false}));
    assert_eq!(status, 200, "{body}");
}

fn check(vg: &Vramguard, query: &str) -> Value {
    let (status, body) = vg.get_json(&format!("/api/v1/system/resource-check?{query}"));
    assert_eq!(status, 200, "{body}");
    body
}

/// The rows of README.md's table under "## Estimates that match the published runs":
/// (profile, width, height, frames, published, vramguard's figure as the README states it).
fn readme_rows() -> Vec<(String, u32, u32, u32, f64, f64)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    readme
        .lines()
        .skip_while(|l| !l.starts_with("## Estimates that match the published runs"))
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let (size, frames) = cells[2].split_once(", ").unwrap();
            let (w, h) = size.split_once('×').unwrap();
            let frames = frames.trim_end_matches(" frames");
            (
                name,
                w.parse().unwrap(),
                h.parse().unwrap(),
                frames.parse().unwrap(),
                cells[3].parse().unwrap(),
                cells[4].parse().unwrap(),
            )
        })
        .collect()
}

/// Must show 1: the README's table is what the binary answers, and each estimate is within 10 %
/// of the published peak.
#[test]
fn the_readme_table_of_published_peaks_is_what_vramguard_answers() {
    let vg = start(80, 0, 256);
    whole_frames(&vg);
    let rows = readme_rows();
    assert_eq!(rows.len(), 6, "{rows:?}");
    for (name, w, h, f, published, stated) in rows {
        let answer = check(&vg, &format!("workload={name}&width={w}&height={h}&frames={f}"));
        let e = &answer["estimate"];
        assert_eq!(
            (e["workload"].as_str(), e["width"].as_u64(), e["frames"].as_u64()),
            (Some(name.as_str()), Some(w.into()), Some(f.into()))
        );
        let got = e["vram_required_gb"].as_f64().unwrap();
        assert!((got - stated).abs() < 0.006, "{name} {w}x{h}x{f}: README says {stated}, vramguard {got}");
        assert!((got - published).abs() / published < 0.10, "{name} {w}x{h}x{f}: {got} vs published {published}");
    }
}

/// Must show 2: A14B at 720P fits an 80 GiB GPU; on 48 GiB it is refused, and rendering at 480P
/// is recommended and fits.
#[test]
fn a14b_at_720p_fits_80_gib_and_on_48_gib_480p_is_recommended() {
    let big = start(80, 0, 256);
    let q = "workload=wan2.2-t2v-a14b&width=1280&height=720&frames=81";
    let answer = check(&big, q);
    assert_eq!(answer["can_start_generation"], json!(true), "{answer}");
    let small = start(48, 0, 256);
    let answer = check(&small, q);
    assert_eq!(answer["can_start_generation"], json!(false), "{answer}");
    let recs: Vec<&str> = answer["recommendations"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let at480 = recs.iter().find(|r| r.starts_with("Render at 832×480: saves ~")).unwrap_or_else(|| panic!("{recs:?}"));
    assert!(at480.ends_with("(fits)"), "{at480}");
    // And it does: the 480P job is admitted there.
    let answer = check(&small, "workload=wan2.2-t2v-a14b&width=832&height=480&frames=81");
    assert_eq!(answer["can_start_generation"], json!(true), "{answer}");
}

/// Must show 2: TI2V-5B at 720P on a 24 GiB GPU with 0.5 GiB used: Wan's whole-frame decode does
/// not fit under 0.95; tiling does, and the recommendation says so.
#[test]
fn ti2v_5b_on_24_gib_fits_only_with_vae_tiling() {
    let vg = start(24, 512, 64);
    let q = "workload=wan2.2-ti2v-5b&width=1280&height=704&frames=121";
    assert_eq!(check(&vg, q)["can_start_generation"], json!(true), "tiling is the default");
    whole_frames(&vg);
    let answer = check(&vg, q);
    assert_eq!(answer["can_start_generation"], json!(false), "{answer}");
    let recs: Vec<&str> = answer["recommendations"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(recs[0].starts_with("Enable VAE tiling (tile 256): saves ~") && recs[0].ends_with("(fits)"), "{recs:?}");
}

/// Must show 3: offloading an A14B job needs its weights in host RAM: refused with 32 GiB,
/// admitted with 128 GiB.
#[test]
fn offloading_is_refused_when_host_ram_cannot_hold_the_weights() {
    let q = "workload=wan2.2-t2v-a14b&width=832&height=480&frames=81";
    let small = start(80, 0, 32);
    let answer = check(&small, q);
    assert_eq!(answer["can_start_generation"], json!(false), "{answer}");
    assert_eq!(answer["resource_status"]["ram_available"], json!(false));
    let issues = answer["blocking_issues"].to_string();
    assert!(issues.contains("Offloading needs ~63.8 GB of host RAM; 28.0 GB available"), "{issues}");
    let (status, refused) = small.post_json(
        "/api/v1/system/generations",
        &json!({"workload": "wan2.2-t2v-a14b", "width": 832, "height": 480, "frames": 81}),
    );
    assert_eq!(status, 409, "{refused}");
    let big = start(80, 0, 128);
    assert_eq!(check(&big, q)["can_start_generation"], json!(true));
    let (status, lease) = big.post_json(
        "/api/v1/system/generations",
        &json!({"workload": "wan2.2-t2v-a14b", "width": 832, "height": 480, "frames": 81}),
    );
    assert_eq!(status, 201, "{lease}");
    assert_eq!(lease["resource_check"]["estimate"]["width"], json!(832));
}

/// Sizes are checked, naming the field.
#[test]
fn a_size_out_of_range_is_refused_naming_it() {
    let vg = start(24, 0, 64);
    for (q, field) in
        [("width=1000", "width"), ("height=8", "height"), ("frames=0", "frames"), ("frames=2000", "frames")]
    {
        let (status, body) = vg.get_json(&format!("/api/v1/system/resource-check?{q}"));
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body["detail"].as_str().unwrap().starts_with(&format!("{field}: ")), "{body}");
    }
    let (status, body) = vg.post_json("/api/v1/system/generations", &json!({"width": 100}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(vg.get_json("/api/v1/system/generations").1["active_generations"], json!(0));
    let (_, list) = vg.get_json("/api/v1/system/workloads");
    let names: Vec<&str> =
        list["workloads"].as_array().unwrap().iter().filter_map(|w| w["estimate"]["workload"].as_str()).collect();
    assert_eq!(names[0], "default");
    assert!(names.contains(&"wan2.2-t2v-a14b") && names.contains(&"wan2.1-i2v-14b"), "{names:?}");
}

/// Must show 5: the new fields are in the OpenAPI document: the request's size, the answer's
/// estimate, the optimization's tiling, the workloads list.
#[test]
fn the_openapi_document_describes_sizes_estimates_and_tiling() {
    let vg = start(24, 0, 64);
    let (_, doc) = vg.get_json("/api/v1/openapi.json");
    let schemas = &doc["components"]["schemas"];
    for (schema, field) in [
        ("ResourceCheck", "estimate"),
        ("EstimateBody", "frames"),
        ("Optimization", "vae_tiling"),
        ("OptimizationPatch", "vae_tiling"),
        ("LeaseRequest", "width"),
        ("LeaseRequest", "frames"),
        ("LeaseBody", "cuda_visible_devices"),
        ("LeaseBody", "attribution"),
    ] {
        assert!(schemas[schema]["properties"].get(field).is_some(), "{schema}.{field} missing");
    }
    let params = doc["paths"]["/api/v1/system/resource-check"]["get"]["parameters"].to_string();
    for name in ["\"width\"", "\"height\"", "\"frames\""] {
        assert!(params.contains(name), "{name} not a resource-check parameter: {params}");
    }
    assert!(doc["paths"].get("/api/v1/system/workloads").is_some());
}
