//! The live page at `/` in a real browser: Debian's headless Chromium, driven over WebDriver,
//! against the real binary on the fake NVML, with the browser's network limited to 127.0.0.1.
//! The checks are what a person sees: text on the page, not the HTML source. Screenshots go to
//! `target/screenshots/` for a reviewer.

mod common;
#[path = "browser/driver.rs"]
mod driver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{GIB, Vramguard, require_tool_from};
use driver::Browser;
use serde_json::json;

const GPU_A: &str = "GPU-11111111-2222-3333-4444-555555555555";

fn scenario(util_a: u32, used_a_gib: u64) -> String {
    format!(
        "[gpu]\nuuid {GPU_A}\nname NVIDIA GeForce RTX 4090\nmemory_total {}\nmemory_used {}\n\
         utilization_gpu {util_a}\ntemperature 63\npower_mw 231500\npower_limit_mw 450000\nfans 45,50\n\
         encoder_utilization 7\ndecoder_utilization 0\n\
         [gpu]\nuuid GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\nname NVIDIA RTX A6000\nmemory_total {}\n\
         memory_used {}\nutilization_gpu 71\ntemperature unsupported\npower_mw 280000\n",
        24 * GIB,
        used_a_gib * GIB,
        48 * GIB,
        30 * GIB,
    )
}

/// Samples every 250 ms and records history every second, so charts have points at once. A
/// fixed port, so that a restart comes back at the address the page was loaded from.
fn start() -> Vramguard {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let listen = format!("127.0.0.1:{}", common::free_port());
    let vg = Vramguard::start(
        &format!("sample_interval: \"250ms\"\nhistory: {{ interval: \"1s\" }}\n{gpu}"),
        Some(&scenario(35, 6)),
        &["--listen", &listen],
    );
    vg.wait_ready();
    vg
}

fn screenshots() -> PathBuf {
    // CARGO_TARGET_TMPDIR is target/tmp.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    dir
}

fn points(b: &Browser, chart: &str, attr: &str) -> usize {
    b.attr(&format!("#{chart}"), attr).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The page a person opens: GPUs, charts with history (each GPU's line too), live updates, leases, the editors'
/// answers, no console errors, and nothing fetched from outside 127.0.0.1.
#[test]
#[cfg_attr(
    not(has_chromium),
    ignore = "needs chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"
)]
fn the_page_in_chromium() {
    if !require_tool_from("chromedriver", "chromium-driver") || !require_tool_from("chromium", "chromium") {
        return;
    }
    let vg = start();
    // History is recorded every second from the first sample: let a few points exist.
    std::thread::sleep(Duration::from_millis(2500));
    let b = Browser::start();
    b.viewport(1280, 800);
    b.goto(&vg.url("/")).expect("open the page");

    // The GPUs of the scenario, by name and index.
    let cards = b.wait("both GPU cards", Duration::from_secs(10), |b| {
        let t = b.text("#gpus");
        (t.contains("NVIDIA GeForce RTX 4090 #0") && t.contains("NVIDIA RTX A6000 #1")).then_some(t)
    });
    assert!(cards.contains("35.0 %") && cards.contains("231.5 W"), "{cards}");
    assert!(cards.contains("used 6.00 GiB (25.0 %)"), "{cards}");
    // The A6000 has no temperature sensor: a dash, not 0.
    assert!(b.text(".gpu:nth-of-type(2) .readings").contains('—'), "{cards}");
    // Power of its limit, the fastest fan, the video engines while one is busy; the A6000's
    // board reports no limit, fans or video load, so it shows none of those rows.
    let first = b.text(".gpu:nth-of-type(1) .readings");
    for shown in ["231.5 W of 450.0 W", "Fan", "50.0 %", "Encoder / decoder", "7.0 % / 0.0 %"] {
        assert!(first.contains(shown), "{shown} missing: {first}");
    }
    let second = b.text(".gpu:nth-of-type(2) .readings");
    assert!(second.contains("280.0 W") && !second.contains(" of "), "{second}");
    assert!(!second.contains("Fan") && !second.contains("Encoder"), "{second}");
    assert_eq!(b.text("#health"), "health: healthy");
    assert_eq!(b.text("#conn"), "live");

    // Every chart holds the history it was backfilled with, and then live points.
    for chart in ["chart-host", "chart-util", "chart-vram"] {
        b.wait(&format!("{chart} to hold history"), Duration::from_secs(5), |b| {
            (points(b, chart, "data-history-points") >= 2 && points(b, chart, "data-points") >= 3).then_some(())
        });
        assert!(!b.text(&format!("#{chart}")).is_empty(), "{chart} has no legend");
    }
    // Each GPU's own line starts in the history, before the page was opened: it holds more
    // readings than the live samples since, and its legend does not call it live-only.
    for chart in ["chart-util", "chart-vram"] {
        b.wait(&format!("{chart}'s GPU lines to hold history"), Duration::from_secs(5), |b| {
            let live = points(b, chart, "data-points").saturating_sub(points(b, chart, "data-history-points"));
            let ok = points(b, chart, "data-gpu-history-points") >= 2 && points(b, chart, "data-gpu-points") > live;
            ok.then_some(())
        });
        let legend = b.text(&format!("#{chart}"));
        assert!(legend.contains("NVIDIA GeForce RTX 4090 #0") && legend.contains("NVIDIA RTX A6000 #1"), "{legend}");
        assert!(!legend.contains("(live)"), "{chart}: {legend}");
    }
    let drawn = b.eval("return document.querySelectorAll('.chart canvas').length", vec![]);
    assert_eq!(drawn, json!(3), "three chart canvases");
    // Another range is fetched from the history again.
    b.click("#ranges button[data-hours='1']");
    b.wait("the 1h range", Duration::from_secs(5), |b| {
        let pressed = b.attr("#ranges button[data-hours='1']", "aria-pressed").as_deref() == Some("true");
        let loaded = b.attr("#chart-vram", "data-history-hours").as_deref() == Some("1");
        (pressed && loaded && points(b, "chart-vram", "data-history-points") >= 2).then_some(())
    });
    let before = points(&b, "chart-util", "data-points");

    // A change of the hardware shows without a reload within 3 s.
    let changed = Instant::now();
    vg.set_scenario(&scenario(93, 18));
    b.wait("the new utilization and VRAM on the card", Duration::from_secs(3), |b| {
        let t = b.text(".gpu:nth-of-type(1)");
        (t.contains("93.0 %") && t.contains("used 18.00 GiB (75.0 %)")).then_some(())
    });
    let took = changed.elapsed();
    b.wait("a live chart point", Duration::from_secs(5), |b| {
        (points(b, "chart-util", "data-points") > before).then_some(())
    });

    // Takes a lease through the API and waits for its row (by client) in the page's table.
    let lease_row = |body: serde_json::Value| -> String {
        let client = body["client"].as_str().unwrap().to_owned();
        let (status, lease) = vg.post_json("/api/v1/system/generations", &body);
        assert_eq!(status, 201, "{lease}");
        let table = b.wait(&format!("{client} in the table"), Duration::from_secs(5), |b| {
            let t = b.text("#leases tbody");
            t.contains(&client).then_some(t)
        });
        table.lines().find(|l| l.contains(&client)).unwrap_or(&table).to_owned()
    };
    // A lease taken through the API appears in the table and as outstanding VRAM on its GPU.
    let row = lease_row(json!({"vram_required_gb": 2.5, "client": "browser-test", "ttl_seconds": 300, "gpu": 1}));
    assert!(row.contains("#1") && row.contains("2.50 GiB"), "{row}");
    b.wait("outstanding VRAM on GPU 1", Duration::from_secs(5), |b| {
        b.text(".gpu:nth-of-type(2) .vram-legend").contains("outstanding 2.50 GiB").then_some(())
    });
    // A job on both GPUs (a gang) is one row naming both, and owes on each card.
    let gang_row = lease_row(json!({"vram_required_gb": 1.5, "client": "browser-gang", "ttl_seconds": 300, "gpus": 2}));
    assert!(gang_row.contains("#0") && gang_row.contains("#1") && gang_row.contains("3.00 GiB"), "{gang_row}");
    b.wait("the gang's outstanding VRAM on both GPUs", Duration::from_secs(5), |b| {
        let (first, second) = (b.text(".gpu:nth-of-type(1) .vram-legend"), b.text(".gpu:nth-of-type(2) .vram-legend"));
        (first.contains("outstanding 1.50 GiB") && second.contains("outstanding 4.00 GiB")).then_some(())
    });

    // What if: 40 GiB does not fit anywhere, and the page says why.
    b.type_into("#whatif input[name=vram_required_gb]", "40");
    b.click("#whatif button[type=submit]");
    let answer = b.wait("the resource-check answer", Duration::from_secs(5), |b| {
        let t = b.text("#whatif-answer");
        t.contains("No, it cannot start now.").then_some(t)
    });
    assert!(answer.contains("Not enough free VRAM"), "{answer}");

    // A percentage typed as a threshold: the API's own hint, and nothing changed.
    b.type_into("#constraints input[name=vram_warning_threshold]", "85");
    b.click("#constraints button[type=submit]");
    let detail = b.wait("the API's detail", Duration::from_secs(5), |b| {
        let t = b.text("#constraints-error");
        (!t.is_empty()).then_some(t)
    });
    assert!(detail.contains("did you mean 0.85?"), "{detail}");
    assert_eq!(vg.get_json("/api/v1/system/constraints").1["constraints"]["vram_warning_threshold"], json!(0.85));
    // A good value is taken, and the threshold marks follow it.
    b.type_into("#constraints input[name=vram_warning_threshold]", "0.8");
    b.click("#constraints button[type=submit]");
    b.wait("the saved threshold on the cards", Duration::from_secs(5), |b| {
        let ok = b.text("#constraints-status").contains("updated successfully")
            && b.text(".gpu:nth-of-type(1) .vram-legend").contains("warning 80 %")
            && b.text("#constraints-error").is_empty();
        ok.then_some(())
    });

    // Screenshots for a reviewer: wide, then a phone.
    let dir = screenshots();
    b.eval("window.scrollTo(0, 0)", vec![]);
    std::thread::sleep(Duration::from_millis(300));
    b.screenshot(&dir.join("page-1280x800.png"));
    let height = b.eval("return document.documentElement.scrollHeight", vec![]).as_u64().unwrap_or(800) as u32;
    b.viewport(1280, height);
    b.screenshot(&dir.join("page-1280-full.png"));
    b.viewport(390, 844);
    let widths = b.eval("return [document.documentElement.scrollWidth, window.innerWidth]", vec![]);
    assert!(widths[0].as_u64() <= widths[1].as_u64(), "the page scrolls sideways at 390 px: {widths}");
    b.wait("charts resized to the phone", Duration::from_secs(3), |b| {
        let w = b.eval("return document.querySelector('#chart-vram .uplot').offsetWidth", vec![]);
        (w.as_u64().is_some_and(|w| w <= 390)).then_some(())
    });
    b.screenshot(&dir.join("page-390x844.png"));

    // Nothing went wrong in the page, apart from the one 400 the test provoked on purpose.
    let bad = problems(&b, |msg| msg.contains("/api/v1/system/constraints") && msg.contains("400"));
    assert!(bad.is_empty(), "console errors: {bad:#?}");

    // A restart: the page says it is reconnecting, comes back by itself, and follows the new
    // process. Only the refused connections of the restart itself may be logged.
    let vg = vg.restart(false);
    b.wait("the page to notice the restart", Duration::from_secs(5), |b| {
        b.text("#conn").starts_with("reconnecting").then_some(())
    });
    vg.wait_ready();
    b.wait("the page to reconnect", Duration::from_secs(10), |b| (b.text("#conn") == "live").then_some(()));
    vg.set_scenario(&scenario(12, 18));
    b.wait("a reading after the restart", Duration::from_secs(3), |b| {
        b.text(".gpu:nth-of-type(1) .readings").contains("12.0 %").then_some(())
    });
    let bad = problems(&b, |msg| msg.contains("ERR_CONNECTION_REFUSED") || msg.contains("WebSocket connection"));
    assert!(bad.is_empty(), "console errors around the restart: {bad:#?}");

    // The browser really cannot leave 127.0.0.1: a page elsewhere does not load.
    let _ = b.goto("http://example.com/");
    let at = b.eval("return location.href", vec![]);
    assert!(at.as_str().is_some_and(|u| u.starts_with("chrome-error://")), "example.com loaded: {at}");

    assert!(took <= Duration::from_secs(3), "the change took {took:?} to show");
    eprintln!("scenario change visible after {took:?}; screenshots in {}", dir.display());
}

/// Errors and warnings the page logged since the last call, except those `expected` accepts
/// (by message) among failed loads.
fn problems(b: &Browser, expected: impl Fn(&str) -> bool) -> Vec<serde_json::Value> {
    b.console()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
        .filter(|e| !(e["source"] == "network" && expected(e["message"].as_str().unwrap_or(""))))
        .collect()
}

/// The page's HTTP answers: types, the CSP, revalidation, and `/` answering fast.
#[test]
fn page_answers() {
    let vg = start();
    let client = vg.client();
    for (path, kind) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/js/charts.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
        ("/assets/vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let r = client.get(vg.url(path)).send().expect("GET");
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], kind, "{path}");
        assert!(h["content-security-policy"].to_str().unwrap().starts_with("default-src 'self'"), "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        let etag = h["etag"].clone();
        let again = client.get(vg.url(path)).header("if-none-match", etag).send().expect("GET");
        assert_eq!(again.status(), 304, "{path} revalidates");
    }
    assert_eq!(vg.get("/assets/nope.js").0, 404);

    // How fast `/` answers is measured by scripts/bench.sh (BENCHMARKS.md), not asserted here.
}
