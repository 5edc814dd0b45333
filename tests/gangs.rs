//! One generation sharded over several GPUs (a gang, issue #24), against the real binary and the
//! fake NVML: where resource-check would put each rank, the Wan2.2 table's multi-GPU peaks as
//! per-rank figures, and the published out-of-memory setups refused.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    let seen = indices(&a);
    assert!(!seen.contains(&0), "GPU 0 has the least room: {a}");
    let distinct: std::collections::BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "{a}");
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
    let text = a["blocking_issues"][0].as_str().unwrap();
    assert!(text.starts_with("Not enough GPUs for this generation (needs 8 GPUs with "), "{text}");
    // Refused at once: a request willing to wait is not queued.
    let body = serde_json::json!({"workload": "wan2.2-t2v-a14b", "gpus": 8, "wait_seconds": 5});
    let (status, refused) = v100s.post_json("/api/v1/system/generations", &body);
    assert_eq!(status, 409, "{refused}");
    assert!(refused.get("queue_position").is_none(), "{refused}");
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
    assert_eq!(m.value("vramguard_generations_that_fit", &[("workload", "default")]), Some(0.0));
    // Four 80 GiB GPUs: no series for eight; two ranks would need 81 each (half of 117 GiB of
    // fp32 weights and the 720P sequence), four fit once.
    let four = start_with("workload: wan2.2-t2v-a14b\n", 4, 80, &[]);
    let m = four.metrics();
    assert_eq!(m.value("vramguard_gangs_that_fit", &[("gpus", "4")]), Some(1.0), "{}", m.text);
    assert_eq!(m.value("vramguard_gangs_that_fit", &[("gpus", "2")]), Some(0.0));
    assert_eq!(m.value("vramguard_gangs_that_fit", &[("gpus", "8")]), None);
}

// ---- Gang leases -------------------------------------------------------------------------

const LEASES: &str = "/api/v1/system/generations";

/// A client that waits as long as any request here may.
fn patient() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

/// POSTs a lease request; (status, body).
fn take(url: &str, body: &Value) -> (u16, Value) {
    let r = patient().post(url).json(body).send().expect("POST generations");
    (r.status().as_u16(), r.json().unwrap())
}

fn lease_gpus(lease: &Value) -> Vec<u64> {
    lease["gpus"].as_array().unwrap().iter().map(|g| g["index"].as_u64().unwrap()).collect()
}

fn release(vg: &Vramguard, lease: &Value) {
    let (status, body) = vg.delete(&format!("{LEASES}/{}", lease["id"].as_str().unwrap()));
    assert_eq!(status, 204, "{body}");
}

const GANG_480P: &str = r#"{"workload": "wan2.2-t2v-a14b", "width": 832, "height": 480, "gpus": 4"#;

fn gang_body(extra: &str) -> Value {
    serde_json::from_str(&format!("{GANG_480P}{extra}}}")).unwrap()
}

/// Must show 1: eight 48 GiB GPUs; two 4-GPU T2V-A14B 480P gangs (40.9 per rank) are granted on
/// disjoint GPUs, each one generation with one lease body; a third waits; releasing one gang
/// admits the third on those four.
#[test]
fn two_gangs_fit_a_third_waits_for_one_to_go() {
    let vg = start_with("constraints: { max_concurrent_generations: 4 }\n", 8, 48, &[]);
    let url = vg.url(LEASES);
    let (s1, a) = take(&url, &gang_body(r#", "client": "a""#));
    let (s2, b) = take(&url, &gang_body(r#", "client": "b""#));
    assert_eq!((s1, s2), (201, 201), "{a}\n{b}");
    let (ga, gb) = (lease_gpus(&a), lease_gpus(&b));
    assert_eq!(ga.len(), 4);
    assert!(ga.iter().all(|g| !gb.contains(g)), "disjoint: {ga:?} {gb:?}");
    // The body: rank 0 first, CUDA_VISIBLE_DEVICES the UUIDs in rank order, totals over the GPUs.
    let ranks: Vec<u64> = a["gpus"].as_array().unwrap().iter().map(|g| g["rank"].as_u64().unwrap()).collect();
    assert_eq!(ranks, [0, 1, 2, 3]);
    let uuids: Vec<&str> = a["gpus"].as_array().unwrap().iter().map(|g| g["uuid"].as_str().unwrap()).collect();
    assert_eq!(a["cuda_visible_devices"], uuids.join(","));
    assert_eq!(a["gpu"]["index"], a["gpus"][0]["index"]);
    let per_rank = a["gpus"][0]["vram_reserved_gb"].as_f64().unwrap();
    assert!((per_rank - 40.9).abs() / 40.9 < 0.10, "{per_rank}");
    assert!((a["vram_reserved_gb"].as_f64().unwrap() - 4.0 * per_rank).abs() < 0.05, "{a}");
    // One generation each, eight GPUs held.
    let (_, list) = vg.get_json(LEASES);
    assert_eq!(list["active_generations"], 2, "{list}");
    assert_eq!(list["leases"].as_array().unwrap().len(), 2);
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_active_generations", &[]), Some(2.0));
    assert_eq!(m.value("vramguard_gpus_leased", &[]), Some(8.0));
    // A third waits, and gets the four GPUs the first gang leaves.
    let third = {
        let url = url.clone();
        std::thread::spawn(move || take(&url, &gang_body(r#", "client": "c", "wait_seconds": 30"#)))
    };
    vg.wait_until("the third gang to wait", Duration::from_secs(10), || {
        let (_, q) = vg.get_json(&format!("{LEASES}/queue"));
        q["waiting"].as_array().is_some_and(|w| w.len() == 1 && w[0]["gpus"] == 4)
    });
    let (_, q) = vg.get_json(&format!("{LEASES}/queue"));
    assert_eq!(q["waiting"][0]["holding"], serde_json::json!([]), "nothing fits a rank while both gangs run: {q}");
    release(&vg, &a);
    // One generation ended: counted once, and it taught no per-GPU estimate.
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_generations_finished_total", &[("outcome", "ok")]), Some(1.0));
    assert_eq!(m.value("vramguard_observations_skipped_total", &[("reason", "gang")]), Some(1.0));
    let (s3, c) = third.join().unwrap();
    assert_eq!(s3, 201, "{c}");
    let mut gc = lease_gpus(&c);
    gc.sort_unstable();
    let mut freed = ga.clone();
    freed.sort_unstable();
    assert_eq!(gc, freed, "the third gang runs on the first one's GPUs");
}

/// Must show 2: 30 four-GPU gangs and 30 one-GPU jobs race for eight GPUs, all willing to wait.
/// At no moment does any GPU hold more than the critical threshold allows, no gang holds fewer
/// GPUs than it asked for, every request ends 201 or 409, and no lease is left.
#[test]
fn a_race_of_gangs_and_single_jobs_never_overcommits_a_gpu() {
    let vg = start_with("constraints: { max_concurrent_generations: 10 }\n", 8, 48, &[]);
    let url = vg.url(LEASES);
    let done = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(Mutex::new(0.0f64));
    let monitor = {
        let (list_url, done, worst) = (url.clone(), Arc::clone(&done), Arc::clone(&worst));
        std::thread::spawn(move || {
            let client = patient();
            let mut polls = 0;
            while !done.load(Ordering::SeqCst) {
                let list: Value = client.get(&list_url).send().unwrap().json().unwrap();
                let mut per_gpu = [0.0f64; 8];
                for lease in list["leases"].as_array().unwrap() {
                    let gpus = lease["gpus"].as_array().unwrap();
                    // Never part of a gang: all four GPUs or (a one-GPU job) one.
                    let gang = lease["client"].as_str().unwrap().starts_with("gang-");
                    assert_eq!(gpus.len(), if gang { 4 } else { 1 }, "{lease}");
                    for g in gpus {
                        per_gpu[g["index"].as_u64().unwrap() as usize] += g["vram_reserved_gb"].as_f64().unwrap();
                    }
                }
                let top = per_gpu.iter().copied().fold(0.0, f64::max);
                let mut w = worst.lock().unwrap();
                *w = w.max(top);
                polls += 1;
            }
            polls
        })
    };
    let mut jobs = Vec::new();
    for i in 0..60 {
        let url = url.clone();
        jobs.push(std::thread::spawn(move || {
            let (gang, body) = if i % 2 == 0 {
                (true, gang_body(&format!(r#", "client": "gang-{i}", "wait_seconds": 60"#)))
            } else {
                (false, serde_json::json!({"vram_required_gb": 20, "client": format!("one-{i}"), "wait_seconds": 60}))
            };
            let (status, lease) = take(&url, &body);
            assert!(status == 201 || status == 409, "{status}: {lease}");
            if status == 201 {
                assert_eq!(lease["gpus"].as_array().unwrap().len(), if gang { 4 } else { 1 }, "{lease}");
                std::thread::sleep(Duration::from_millis(150));
                let r = patient().delete(format!("{url}/{}", lease["id"].as_str().unwrap())).send().unwrap();
                assert_eq!(r.status().as_u16(), 204);
            }
            status
        }));
    }
    let statuses: Vec<u16> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    let polls = monitor.join().unwrap();
    assert!(polls > 10, "the monitor looked {polls} times");
    let worst = *worst.lock().unwrap();
    assert!(worst <= 0.95 * 48.0, "a GPU held {worst} GiB of reservations");
    assert!(statuses.iter().filter(|s| **s == 201).count() >= 30, "{statuses:?}");
    let (_, list) = vg.get_json(LEASES);
    assert_eq!(list["leases"], serde_json::json!([]), "{list}");
    let (_, q) = vg.get_json(&format!("{LEASES}/queue"));
    assert_eq!(q["waiting"], serde_json::json!([]), "{q}");
}

/// Seconds since midnight UTC of an answer's RFC 3339 time (`…THH:MM:SS.mmmZ`).
fn second_of_day(rfc3339: &str) -> f64 {
    let time = rfc3339.split('T').nth(1).unwrap().trim_end_matches('Z');
    let parts: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

/// Seconds since midnight UTC now.
fn now_of_day() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() % 86_400.0
}

/// One-GPU jobs of 30 GiB each (one per 48 GiB GPU at a time), from eight clients that ask again
/// as soon as their job ends; each job runs 1 s, the clients started 125 ms apart, so some GPU is
/// always busy. Returns (asked at, granted at) per grant.
fn stream_of_jobs(url: &str, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<(f64, f64)>>> {
    (0..8)
        .map(|i| {
            let (url, stop) = (url.to_owned(), Arc::clone(stop));
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(125 * i));
                let mut grants = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let asked = now_of_day();
                    let body =
                        serde_json::json!({"vram_required_gb": 30, "client": format!("one-{i}"), "wait_seconds": 20});
                    let (status, lease) = take(&url, &body);
                    if status == 201 {
                        grants.push((asked, second_of_day(lease["granted_at"].as_str().unwrap())));
                        std::thread::sleep(Duration::from_secs(1));
                        patient().delete(format!("{url}/{}", lease["id"].as_str().unwrap())).send().unwrap();
                    }
                }
                grants
            })
        })
        .collect()
}

/// An eight-GPU gang of 20 GiB per GPU fits only when no 30 GiB job runs on any GPU.
fn big_gang() -> Value {
    serde_json::json!({"gpus": 8, "vram_required_gb": 20, "workload": "wan2.2-t2v-a14b", "client": "gang", "wait_seconds": 30})
}

/// Must show 3, backfill: behind a stream of one-GPU jobs that would keep some GPU busy for
/// ever, a waiting eight-GPU gang is passed only until it has waited `queue.max_bypass` (2 s);
/// from then on no job starts before it, and it runs once the running ones end.
#[test]
fn a_waiting_gang_is_not_starved_under_backfill() {
    let config = "constraints: { max_concurrent_generations: 10 }\nqueue: { policy: backfill, max_bypass: \"2s\" }\n";
    let vg = start_with(config, 8, 48, &[]);
    let url = vg.url(LEASES);
    let stop = Arc::new(AtomicBool::new(false));
    let stream = stream_of_jobs(&url, &stop);
    std::thread::sleep(Duration::from_millis(1500));
    let joined = now_of_day();
    let (status, gang) = take(&url, &big_gang());
    assert_eq!(status, 201, "{gang}");
    let granted = second_of_day(gang["granted_at"].as_str().unwrap());
    release(&vg, &gang);
    stop.store(true, Ordering::SeqCst);
    let grants: Vec<(f64, f64)> = stream.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let passed: Vec<f64> = grants.iter().map(|(_, g)| *g).filter(|g| *g > joined && *g < granted).collect();
    assert!(!passed.is_empty(), "backfill let jobs pass the gang at first: {grants:?}");
    let late: Vec<f64> = passed.iter().copied().filter(|g| *g > joined + 2.0 + 0.3).collect();
    assert!(late.is_empty(), "jobs started after the gang had waited max_bypass: {late:?} (joined {joined})");
    // Past max_bypass only the jobs already running stood in its way (each runs 1 s).
    assert!(granted - joined < 2.0 + 1.0 + 1.5, "the gang waited {} s", granted - joined);
}

/// Must show 3, fifo: a waiting eight-GPU gang runs before any job that asked after it.
#[test]
fn a_waiting_gang_goes_before_later_jobs_under_fifo() {
    let vg = start_with("constraints: { max_concurrent_generations: 10 }\n", 8, 48, &[]);
    let url = vg.url(LEASES);
    let stop = Arc::new(AtomicBool::new(false));
    let stream = stream_of_jobs(&url, &stop);
    std::thread::sleep(Duration::from_millis(1500));
    let gang = {
        let url = url.clone();
        std::thread::spawn(move || take(&url, &big_gang()))
    };
    let visible = std::cell::Cell::new(0.0);
    vg.wait_until("the gang in the queue", Duration::from_secs(10), || {
        let (_, q) = vg.get_json(&format!("{LEASES}/queue"));
        let there = q["waiting"].as_array().unwrap().iter().any(|w| w["client"] == "gang");
        visible.set(now_of_day());
        there
    });
    let visible = visible.get();
    let (status, gang) = gang.join().unwrap();
    assert_eq!(status, 201, "{gang}");
    let granted = second_of_day(gang["granted_at"].as_str().unwrap());
    release(&vg, &gang);
    stop.store(true, Ordering::SeqCst);
    let grants: Vec<(f64, f64)> = stream.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let overtook: Vec<&(f64, f64)> = grants.iter().filter(|(asked, g)| *asked > visible && *g < granted).collect();
    assert!(overtook.is_empty(), "jobs that asked after the gang ran before it: {overtook:?}");
    assert!(grants.iter().any(|(asked, _)| *asked > visible), "the stream went on asking: {grants:?}");
}

/// Must show 5: pinned GPUs take the ranks in their order; a pinned GPU with a fault refuses the
/// gang naming it, and a gang needing every GPU counts only the healthy ones; a live gang
/// survives `kill -9` (still held, still one generation on its GPUs) and is released whole.
#[test]
fn pins_faults_and_a_restart() {
    let busy = 2 * GIB;
    let mut scenario: String = (0..4).map(|_| format!("[gpu]\nmemory_total {}\n", 48 * GIB)).collect();
    scenario.push_str(&format!(
        "[gpu]\nmemory_total {}\nmemory_used {busy}\nremap_pending 1\nremapped_rows_uncorrectable 1\n",
        48 * GIB
    ));
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let vg = Vramguard::start(
        &format!("sample_interval: \"250ms\"\n{gpu}constraints: {{ max_concurrent_generations: 4 }}\n"),
        Some(&scenario),
        &[],
    );
    vg.wait_ready();
    let url = vg.url(LEASES);
    let pinned = serde_json::json!({"gpus": 2, "gpu_indices": [3, 1], "vram_required_gb": 10, "client": "pinned"});
    let (status, lease) = take(&url, &pinned);
    assert_eq!(status, 201, "{lease}");
    assert_eq!(lease_gpus(&lease), [3, 1]);
    let faulty = serde_json::json!({"gpus": 2, "gpu_indices": [4, 0], "vram_required_gb": 10});
    let (status, refused) = take(&url, &faulty);
    assert_eq!(status, 409, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("GPU 4 unhealthy: row remap pending"), "{refused}");
    // Short of GPUs only while one has a fault: it may clear, so a request willing to wait waits.
    let (status, refused) = take(&url, &serde_json::json!({"gpus": 5, "vram_required_gb": 10, "wait_seconds": 1}));
    assert_eq!(status, 409, "{refused}");
    let detail = refused["detail"].as_str().unwrap();
    assert!(detail.contains("needs 5 GPUs with 10.0 GB each; 4 healthy GPUs here"), "{refused}");
    assert!(detail.contains("GPU 4 unhealthy"), "{refused}");
    assert_eq!(refused["queue_position"], 1, "it waited: {refused}");
    // Bad fields are 400s naming the field.
    for (body, field) in [
        (serde_json::json!({"gpus": 0}), "gpus: 0 is out of range"),
        (serde_json::json!({"gpus": 2, "gpu_indices": [1]}), "gpu_indices: 1 indices for 2 GPUs"),
        (serde_json::json!({"gpus": 2, "gpu": 1}), "gpu: names one GPU"),
        (serde_json::json!({"gpu": 1, "gpu_indices": [1]}), "gpu: and gpu_indices both pin GPUs"),
    ] {
        let (status, answer) = take(&url, &body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["detail"].as_str().unwrap().starts_with(field), "{answer}");
    }
    // One pinned GPU without `gpus` is the one-GPU pin, as on resource-check.
    let (status, one) = take(&url, &serde_json::json!({"gpu_indices": [2], "vram_required_gb": 5, "client": "one"}));
    assert_eq!(status, 201, "{one}");
    assert_eq!(lease_gpus(&one), [2]);
    release(&vg, &one);
    // kill -9 and back: the gang is still held, one generation on its two GPUs.
    let vg = vg.restart(true);
    vg.wait_ready();
    let (_, list) = vg.get_json(LEASES);
    assert_eq!(list["active_generations"], 1, "{list}");
    assert_eq!(lease_gpus(&list["leases"][0]), [3, 1], "{list}");
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_gpus_leased", &[]), Some(2.0));
    for gpu in ["3", "1"] {
        assert_eq!(m.value("vramguard_gpu_memory_outstanding_bytes", &[("gpu", gpu)]), Some(10.0 * GIB as f64));
    }
    release(&vg, &lease);
    let (_, list) = vg.get_json(LEASES);
    assert_eq!(list["leases"], serde_json::json!([]));
    assert_eq!(vg.metrics().value("vramguard_gpus_leased", &[]), Some(0.0));
}

/// Under fifo, a waiting gang that nothing may pass has the GPUs that would take one of its
/// ranks held for it: listed as `holding`, counted as owed (a resource-check for a job those GPUs
/// could otherwise take says no), and given to the gang once the rest frees up.
#[test]
fn gpus_are_held_for_a_waiting_gang() {
    let vg = start_with("constraints: { max_concurrent_generations: 10 }\n", 8, 48, &[]);
    let url = vg.url(LEASES);
    let singles: Vec<Value> = (0..4)
        .map(|g| {
            let (status, lease) = take(&url, &serde_json::json!({"vram_required_gb": 30, "gpu": g}));
            assert_eq!(status, 201, "{lease}");
            lease
        })
        .collect();
    // Without the gang, GPU 4..7 would take a 30 GiB job.
    assert_eq!(check(&vg, "vram_required_gb=30")["can_start_generation"], true);
    let gang = {
        let url = url.clone();
        std::thread::spawn(move || take(&url, &big_gang()))
    };
    vg.wait_until("GPUs 4-7 held for the gang", Duration::from_secs(10), || {
        let (_, q) = vg.get_json(&format!("{LEASES}/queue"));
        q["waiting"][0]["holding"] == serde_json::json!([4, 5, 6, 7])
    });
    let refused = check(&vg, "vram_required_gb=30");
    assert_eq!(refused["can_start_generation"], false, "{refused}");
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_gpu_memory_outstanding_bytes", &[("gpu", "5")]), Some(20.0 * GIB as f64));
    for lease in &singles {
        release(&vg, lease);
    }
    let (status, gang) = gang.join().unwrap();
    assert_eq!(status, 201, "{gang}");
    assert_eq!(lease_gpus(&gang).len(), 8);
    let (_, q) = vg.get_json(&format!("{LEASES}/queue"));
    assert_eq!(q["waiting"], serde_json::json!([]));
    // Held no more: GPU 5 owes the gang's own rank only.
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_gpu_memory_outstanding_bytes", &[("gpu", "5")]), Some(20.0 * GIB as f64));
    release(&vg, &gang);
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_gpu_memory_outstanding_bytes", &[("gpu", "5")]), Some(0.0), "{}", m.text);
}

/// Must show 5 (placement): where NVML reports topology (the fake's `pcie_switch`/`numa_node`),
/// a gang goes to GPUs under one PCIe switch, though by free VRAM alone it would straddle two.
#[test]
fn a_gang_stays_under_one_pcie_switch_when_nvml_says_which() {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let scenario = |with_topology: bool| -> String {
        (0..8)
            .map(|i| {
                let used = if i == 0 { 4 * GIB } else { 0 };
                let topo = if with_topology {
                    format!("pcie_switch sw{}\nnuma_node {}\n", i / 4, i / 4)
                } else {
                    String::new()
                };
                format!("[gpu]\nmemory_total {}\nmemory_used {used}\n{topo}", 48 * GIB)
            })
            .collect()
    };
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}"), Some(&scenario(true)), &[]);
    vg.wait_ready();
    let a = check(&vg, "vram_required_gb=30&gpus=4");
    assert_eq!(indices(&a), [4, 5, 6, 7], "{a}");
    let flat = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}"), Some(&scenario(false)), &[]);
    flat.wait_ready();
    assert_eq!(indices(&check(&flat, "vram_required_gb=30&gpus=4")), [1, 2, 3, 4], "by free VRAM alone");
}

/// When every GPU takes an ordinary rank but none takes rank 0's larger figure (rank 0 alone
/// decodes the video), the refusal names the GPU meant for rank 0 and what it is short of:
/// TI2V-5B with Wan's whole-frame decode needs 22.9 on rank 0 and 16.2 on the other; two 32 GiB
/// cards with 9 GiB used each have 21.4 below the 95 % limit.
#[test]
fn a_refusal_names_the_gpu_short_of_rank_zero() {
    let vg = start(2, 32, &[(0, 9), (1, 9)]);
    let (status, body) = vg.post_json("/api/v1/system/optimization", &serde_json::json!({"vae_tiling": false}));
    assert_eq!(status, 200, "{body}");
    let a = check(&vg, "gpus=2");
    assert_eq!(a["can_start_generation"], false, "{a}");
    let text = a["blocking_issues"][0].as_str().unwrap();
    assert!(text.contains("; 1 fit: GPU 0 has 21.4 GB free, short of rank 0's 22.9)"), "{text}");
}
