//! Waiting admission against the real binary and the fake NVML: requests that wait for room,
//! their order (fifo and backfill), deadlines, clients that leave, the capacity gauge for
//! autoscalers, and a race of waiting requests against the concurrency limit.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{GIB, Vramguard};
use serde_json::{Value, json};

const LEASES: &str = "/api/v1/system/generations";
const QUEUE: &str = "/api/v1/system/generations/queue";

/// One 24 GiB GPU with 2 GiB held by another process.
fn one_gpu() -> String {
    format!("[gpu]\nmemory_total {}\nmemory_used {}\nprocess 7 {}\n", 24 * GIB, 2 * GIB, 2 * GIB)
}

fn start(extra: &str, scenario: &str) -> Vramguard {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}{extra}"), Some(scenario), &[]);
    vg.wait_ready();
    vg
}

/// A client that waits as long as any request here may.
fn patient() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

/// What a POST answered: status, Retry-After, body, and when it arrived.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
    at: Instant,
}

fn post_to(url: String, body: &Value) -> Answer {
    let r = patient().post(url).json(body).send().expect("POST generations");
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    Answer { status, retry_after, body: r.json().unwrap(), at: Instant::now() }
}

fn post(vg: &Vramguard, body: &Value) -> Answer {
    post_to(vg.url(LEASES), body)
}

/// Posts in the background; the answer arrives through the handle.
fn post_later(vg: &Vramguard, body: Value) -> std::thread::JoinHandle<Answer> {
    let url = vg.url(LEASES);
    std::thread::spawn(move || post_to(url, &body))
}

fn waiting_clients(vg: &Vramguard) -> Vec<String> {
    let (status, q) = vg.get_json(QUEUE);
    assert_eq!(status, 200, "{q}");
    q["waiting"].as_array().unwrap().iter().map(|w| w["client"].as_str().unwrap_or("").to_owned()).collect()
}

fn wait_for_queue(vg: &Vramguard, want: &[&str]) {
    vg.wait_until(&format!("queue {want:?}"), Duration::from_secs(10), || waiting_clients(vg) == want);
}

fn release(vg: &Vramguard, lease: &Value) {
    let (status, body) = vg.delete(&format!("{LEASES}/{}", lease["id"].as_str().unwrap()));
    assert_eq!(status, 204, "{body}");
}

fn live_leases(vg: &Vramguard) -> usize {
    vg.get_json(LEASES).1["leases"].as_array().unwrap().len()
}

/// Limit 1, A held; B waits; A is released 2 s later and B's 201 follows within a second.
#[test]
fn a_waiting_request_gets_the_released_slot() {
    let vg = start("constraints: { max_concurrent_generations: 1 }\n", &one_gpu());
    let a = post(&vg, &json!({"vram_required_gb": 1, "client": "A"}));
    assert_eq!(a.status, 201, "{}", a.body);
    let b = post_later(&vg, json!({"vram_required_gb": 1, "client": "B", "wait_seconds": 10}));
    wait_for_queue(&vg, &["B"]);
    let (_, q) = vg.get_json(QUEUE);
    assert_eq!(q["policy"], json!("fifo"));
    let w = &q["waiting"][0];
    assert_eq!((w["position"].clone(), w["workload"].clone()), (json!(1), json!("default")));
    assert_eq!(w["vram_required_gb"], json!(1.0));
    assert!(w["waited_seconds"].as_f64().unwrap() >= 0.0 && w["deadline"].as_str().unwrap().ends_with('Z'), "{q}");
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_admission_waiting", &[]), Some(1.0));
    std::thread::sleep(Duration::from_secs(2));
    let released = Instant::now();
    release(&vg, &a.body);
    let b = b.join().unwrap();
    assert_eq!(b.status, 201, "{}", b.body);
    let after = b.at.duration_since(released);
    assert!(after < Duration::from_secs(1), "B was admitted {after:?} after the release");
    assert_eq!(b.body["client"], json!("B"));
    assert!(waiting_clients(&vg).is_empty());
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_admission_waiting", &[]), Some(0.0));
    assert_eq!(m.value("vramguard_admission_wait_seconds_count", &[("result", "admitted")]), Some(2.0));
    // B's answer took at least the two seconds it waited.
    assert!(m.value("vramguard_admission_wait_seconds_sum", &[("result", "admitted")]).unwrap() >= 2.0);
}

/// B then C wait; one release admits B, not C; a request that will not wait is refused at once
/// naming the queue; the next release admits C.
#[test]
fn first_come_first_served() {
    let vg = start("constraints: { max_concurrent_generations: 1 }\n", &one_gpu());
    let a = post(&vg, &json!({"vram_required_gb": 1, "client": "A"}));
    assert_eq!(a.status, 201);
    let b = post_later(&vg, json!({"vram_required_gb": 1, "client": "B", "wait_seconds": 20}));
    wait_for_queue(&vg, &["B"]);
    let c = post_later(&vg, json!({"vram_required_gb": 1, "client": "C", "wait_seconds": 20}));
    wait_for_queue(&vg, &["B", "C"]);
    let d = post(&vg, &json!({"vram_required_gb": 1, "client": "D"}));
    assert_eq!(d.status, 409, "{}", d.body);
    assert_eq!(d.body["resource_check"]["blocking_issues"][0], json!("2 generations are waiting ahead"), "{}", d.body);
    assert!(d.body.get("queue_position").is_none(), "{}", d.body);
    release(&vg, &a.body);
    let b = b.join().unwrap();
    assert_eq!((b.status, b.body["client"].clone()), (201, json!("B")), "{}", b.body);
    wait_for_queue(&vg, &["C"]);
    assert_eq!(live_leases(&vg), 1);
    release(&vg, &b.body);
    let c = c.join().unwrap();
    assert_eq!((c.status, c.body["client"].clone()), (201, json!("C")), "{}", c.body);
}

/// Backfill: a big B that cannot fit does not hold up a small C; once B has waited
/// `max_bypass`, a small D that fits waits behind it instead, and B goes first when room comes.
#[test]
fn backfill_lets_small_jobs_past_until_max_bypass() {
    let vg = start(
        "constraints: { max_concurrent_generations: 10 }\nqueue: { policy: backfill, max_bypass: 3s }\n",
        &one_gpu(),
    );
    // 2 used + 10 owed: B's 11 would make 23 of 24 GiB (critical: 22.8); C's 4 makes 16.
    let a = post(&vg, &json!({"vram_required_gb": 10, "client": "A"}));
    assert_eq!(a.status, 201, "{}", a.body);
    let b = post_later(&vg, json!({"vram_required_gb": 11, "client": "B", "wait_seconds": 30}));
    wait_for_queue(&vg, &["B"]);
    let c = post(&vg, &json!({"vram_required_gb": 4, "client": "C", "wait_seconds": 5}));
    assert_eq!(c.status, 201, "backfill admits C past B: {}", c.body);
    release(&vg, &c.body);
    // B has now waited past max_bypass: D fits but must not overtake it.
    std::thread::sleep(Duration::from_millis(3200));
    let d = post(&vg, &json!({"vram_required_gb": 4, "client": "D", "wait_seconds": 1}));
    assert_eq!(d.status, 409, "{}", d.body);
    assert_eq!(d.body["queue_position"], json!(2), "{}", d.body);
    // A request that will not wait at all is told so too.
    let e = post(&vg, &json!({"vram_required_gb": 4, "client": "E"}));
    assert_eq!(e.status, 409, "{}", e.body);
    assert_eq!(e.body["resource_check"]["blocking_issues"][0], json!("1 generation is waiting ahead"), "{}", e.body);
    release(&vg, &a.body);
    let b = b.join().unwrap();
    assert_eq!((b.status, b.body["client"].clone()), (201, json!("B")), "{}", b.body);
}

/// The same two requests under fifo: C waits behind B.
#[test]
fn fifo_does_not_let_a_small_job_past() {
    let vg = start("constraints: { max_concurrent_generations: 10 }\n", &one_gpu());
    let a = post(&vg, &json!({"vram_required_gb": 10, "client": "A"}));
    assert_eq!(a.status, 201);
    let _b = post_later(&vg, json!({"vram_required_gb": 11, "client": "B", "wait_seconds": 3}));
    wait_for_queue(&vg, &["B"]);
    let c = post(&vg, &json!({"vram_required_gb": 4, "client": "C", "wait_seconds": 1}));
    assert_eq!(c.status, 409, "{}", c.body);
    assert_eq!(c.body["queue_position"], json!(2), "{}", c.body);
}

/// A deadline passes: 409 with the last decision, the queue position and Retry-After. A refusal
/// that cannot clear does not wait at all.
#[test]
fn deadline_and_lasting_refusals() {
    let vg = start("constraints: { max_concurrent_generations: 1 }\n", &one_gpu());
    let a = post(&vg, &json!({"vram_required_gb": 1, "client": "A"}));
    assert_eq!(a.status, 201);
    let asked = Instant::now();
    let b = post(&vg, &json!({"vram_required_gb": 1, "client": "B", "wait_seconds": 1.5}));
    let took = b.at.duration_since(asked);
    assert_eq!(b.status, 409, "{}", b.body);
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_millis(2500), "answered after {took:?}");
    assert_eq!(b.body["queue_position"], json!(1), "{}", b.body);
    assert_eq!(b.retry_after.as_deref(), Some("1"));
    assert_eq!(b.body["resource_check"]["blocking_issues"][0], json!("Concurrent generation limit reached (1/1)"));
    assert!(waiting_clients(&vg).is_empty());
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_admission_wait_seconds_count", &[("result", "timed_out")]), Some(1.0));
    // Larger than the GPU can ever hold below critical (22.8 GiB), an unknown GPU, over budget:
    // refused at once though they asked to wait.
    let (status, _) = vg.post_json("/api/v1/system/optimization", &json!({"max_vram_usage_gb": 12.0}));
    assert_eq!(status, 200);
    for (body, text) in [
        (json!({"vram_required_gb": 23, "wait_seconds": 10}), "more than max_vram_usage_gb"),
        (json!({"vram_required_gb": 1, "gpu": 5, "wait_seconds": 10}), "GPU 5 is not visible"),
    ] {
        let asked = Instant::now();
        let r = post(&vg, &body);
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(r.at.duration_since(asked) < Duration::from_millis(500), "{body} waited");
        assert!(r.body.get("queue_position").is_none(), "{}", r.body);
        assert!(r.body["detail"].as_str().unwrap().contains(text), "{}", r.body);
    }
    // Out of range.
    let (status, body) = vg.post_json(LEASES, &json!({"vram_required_gb": 1, "wait_seconds": 301}));
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("wait_seconds"), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("0 to 300"), "{body}");
}

/// A waiting client that hangs up leaves the queue and is never granted a lease.
#[test]
fn a_client_that_leaves_gets_no_lease() {
    let vg = start("constraints: { max_concurrent_generations: 1 }\n", &one_gpu());
    let a = post(&vg, &json!({"vram_required_gb": 1, "client": "A"}));
    assert_eq!(a.status, 201);
    let impatient = reqwest::blocking::Client::builder().timeout(Duration::from_millis(800)).build().unwrap();
    let r =
        impatient.post(vg.url(LEASES)).json(&json!({"vram_required_gb": 1, "client": "B", "wait_seconds": 30})).send();
    assert!(r.is_err(), "the client gave up first");
    wait_for_queue(&vg, &[]);
    release(&vg, &a.body);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(live_leases(&vg), 0, "{}", vg.get_json(LEASES).1);
    assert_eq!(vg.metrics().value("vramguard_admission_waiting", &[]), Some(0.0));
}

/// Two GPUs and a 5 GiB workload. GPU 0: 24 GiB, 2 used: 2 + 5k < 22.8 for k ≤ 4. GPU 1: 16
/// GiB, empty: 5k < 15.2 for k ≤ 3. So 7 fit, with 10 slots. A 5 GiB lease on GPU 0 leaves 6;
/// a limit of 3 slots with that lease leaves 2; a busy CPU leaves none.
#[test]
fn generations_that_fit_is_exact_on_two_gpus() {
    let scenario = format!(
        "[gpu]\nmemory_total {}\nmemory_used {}\nprocess 7 {}\n[gpu]\nmemory_total {}\nmemory_used 0\n",
        24 * GIB,
        2 * GIB,
        2 * GIB,
        16 * GIB
    );
    // Exactly 5 GiB: 256 bytes × 4,096 tokens (1024×1024 / 8 / 2, one frame) × width 5120.
    let five = "workloads: { five: { name: five, width: 1024, height: 1024, frames: 1, text_encoder: { params_billions: 0 }, transformer: { params_billions: 0, dim: 5120, patch: [1, 2, 2], activation_bytes: 256 }, vae: { params_billions: 0, temporal_stride: 4, spatial_stride: 8, decode_bytes_per_pixel: 0 }, overhead_gb: 0 } }\n";
    let vg = start(&format!("constraints: {{ max_concurrent_generations: 10 }}\n{five}"), &scenario);
    let (_, check) = vg.get_json("/api/v1/system/resource-check?workload=five");
    assert_eq!(check["vram_required_gb"], json!(5.0), "{check}");
    let fit = |vg: &Vramguard| vg.metrics().value("vramguard_generations_that_fit", &[("workload", "five")]);
    assert_eq!(fit(&vg), Some(7.0));
    assert!(vg.metrics().value("vramguard_generations_that_fit", &[("workload", "default")]).is_some());
    let a = post(&vg, &json!({"workload": "five", "gpu": 0}));
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(fit(&vg), Some(6.0));
    let (status, _) = vg.post_json("/api/v1/system/constraints", &json!({"max_concurrent_generations": 3}));
    assert_eq!(status, 200);
    assert_eq!(fit(&vg), Some(2.0));
    vg.set_host(common::Host { cpu: 0.95, ..common::CALM });
    vg.wait_metrics("a busy CPU", Duration::from_secs(10), |m| {
        m.value("vramguard_generations_that_fit", &[("workload", "five")]) == Some(0.0)
    });
}

/// Fifty requests wait at limit 2 while each admitted job holds its lease briefly: all fifty are
/// admitted in turn, and no poll ever sees more than two live leases.
#[test]
fn race_of_waiting_requests_never_exceeds_the_limit() {
    let vg = start("constraints: { max_concurrent_generations: 2 }\n", &one_gpu());
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicU32::new(0));
    let watcher = {
        let (stop, most, url) = (Arc::clone(&stop), Arc::clone(&most), vg.url(LEASES));
        std::thread::spawn(move || {
            let client = patient();
            while !stop.load(Ordering::Relaxed) {
                let list: Value = client.get(&url).send().unwrap().json().unwrap();
                most.fetch_max(list["leases"].as_array().unwrap().len() as u32, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..50)
        .map(|i| {
            let (base, admitted) = (vg.url(LEASES), Arc::clone(&admitted));
            std::thread::spawn(move || {
                let client = patient();
                let r = client
                    .post(&base)
                    .json(&json!({"vram_required_gb": 1, "client": format!("job-{i}"), "wait_seconds": 90}))
                    .send()
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201);
                let lease: Value = r.json().unwrap();
                std::thread::sleep(Duration::from_millis(30));
                let id = lease["id"].as_str().unwrap();
                let r = client.delete(format!("{base}/{id}")).send().unwrap();
                assert_eq!(r.status().as_u16(), 204);
                admitted.lock().unwrap().push(i);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("every waiting request is admitted and released");
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert_eq!(admitted.lock().unwrap().len(), 50);
    let most = most.load(Ordering::Relaxed);
    assert!((1..=2).contains(&most), "at most 2 live leases at any poll, saw {most}");
    let m = vg.metrics();
    assert_eq!(
        m.value("vramguard_admission_decisions_total", &[("result", "admitted"), ("reason", "none")]),
        Some(50.0)
    );
    assert_eq!(m.value("vramguard_admission_waiting", &[]), Some(0.0));
}

/// `queue.max_wait` caps how long one request is held, whatever it asked for.
#[test]
fn max_wait_caps_the_wait() {
    let vg = start("constraints: { max_concurrent_generations: 1 }\nqueue: { max_wait: 1s }\n", &one_gpu());
    assert_eq!(post(&vg, &json!({"vram_required_gb": 1})).status, 201);
    let asked = Instant::now();
    let b = post(&vg, &json!({"vram_required_gb": 1, "wait_seconds": 60}));
    let took = b.at.duration_since(asked);
    assert_eq!((b.status, b.body["queue_position"].clone()), (409, json!(1)), "{}", b.body);
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(2), "held {took:?}");
}
