#!/usr/bin/env bash
# Load and cost benchmark of vramguard against the real binary, with its peers measured in the
# same run: prometheus-node-exporter for /metrics, and an axum hello-world built from this
# repository (examples/hello.rs) that returns vramguard's own resource-check answer as a fixed
# body, for the resource-check throughput (and, with the /metrics text as its body, the floor of
# a /metrics scrape). Prints one table; BENCHMARKS.md records a run of it.
#
#   scripts/bench.sh              everything: the criterion cost curve (about 6 minutes), then
#                                 the load steps (about 5 minutes), after the release builds
#   scripts/bench.sh --no-curve   the load steps only
#   scripts/bench.sh --curve      the cost curve only: cargo bench --bench cost_curve, its table,
#                                 benchmarks/cost-curve.{png,csv}
#
# Environment: BENCH_ROUNDS (default 2) rounds of resource-check, vramguard and hello-world in
# turn; BENCH_PERF=0 skips the perf profiles.
#
# Needs: wrk, prometheus-node-exporter, gnuplot, perf (linux-perf), python3; the Debian packages
# are installed if missing (as root). Everything runs on loopback; every load step is bounded in
# time. vramguard runs without MALLOC_ARENA_MAX (glibc's default arenas), as the RSS target asks.
set -euo pipefail
cd "$(dirname "$0")/.."
curve=1 load=1
case "${1:-}" in
  --no-curve) curve=0 ;;
  --curve) load=0 ;;
  "") ;;
  *) echo "usage: $0 [--no-curve | --curve]" >&2; exit 2 ;;
esac
rounds=${BENCH_ROUNDS:-2}
export DEBIAN_FRONTEND=noninteractive
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v prometheus-node-exporter >/dev/null || need+=(prometheus-node-exporter)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
if [ "${BENCH_PERF:-1}" != 0 ]; then command -v perf >/dev/null || need+=(linux-perf); fi
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# --- The cost curve (criterion), first, while nothing else runs ---------------------------------
if [ "$curve" = 1 ]; then
  echo "== cost curve: cargo bench --bench cost_curve" >&2
  cargo bench --quiet --bench cost_curve >"$work/criterion.log" 2>&1 || { cat "$work/criterion.log" >&2; exit 1; }
  python3 scripts/cost-curve.py target/criterion benchmarks >"$work/curve.md"
  if [ "$load" = 0 ]; then cat "$work/curve.md"; exit 0; fi
fi

echo "== release build: vramguard and examples/hello" >&2
cargo build --release --quiet --bin vramguard --example hello
bin=target/release/vramguard
hello=target/release/examples/hello
fake=$(ls -t target/release/build/vramguard-*/out/libnvidia-ml-fake.so | head -1)

# 8 GPUs with 4 compute processes each: 8 GPUs x 32 processes in all.
{
  for g in 0 1 2 3 4 5 6 7; do
    echo "[gpu]"
    echo "name NVIDIA H100 80GB HBM3"
    echo "memory_total $((80 * 1024 * 1024 * 1024))"
    echo "memory_used $((g * 8 * 1024 * 1024 * 1024))"
    echo "utilization_gpu $((g * 10))"
    echo "temperature $((40 + g))"
    echo "power_mw $((300000 + g * 1000))"
    for p in 0 1 2 3; do echo "process $((1000 + g * 10 + p)) $((2 * 1024 * 1024 * 1024))"; done
  done
} >"$work/scenario.txt"

listen_addr() { # log file -> the address the server printed
  local a=""
  for _ in $(seq 1 100); do
    a=$(grep -o 'listening on http://[0-9.:]*' "$1" | head -1 | sed 's|listening on http://||') || true
    [ -n "$a" ] && break
    sleep 0.1
  done
  echo "$a"
}

# A day of history at 5 s already in the store, so RSS is measured with it.
mkdir -p "$work/state"
start_vg() { # $1 = sample interval
  cat >"$work/config.yaml" <<CONF
listen: "127.0.0.1:0"
sample_interval: "$1"
state_dir: "$work/state"
gpu: { nvml_library: "$fake" }
constraints: { max_concurrent_generations: 10, cpu_warning_threshold: 1.0, ram_warning_threshold: 1.0 }
CONF
  : >"$work/vg.log"
  FAKE_NVML_SCENARIO="$work/scenario.txt" env -u MALLOC_ARENA_MAX "$bin" --config "$work/config.yaml" 2>"$work/vg.log" &
  vg_pid=$!
  pids+=("$vg_pid")
  addr=$(listen_addr "$work/vg.log")
  for _ in $(seq 1 100); do curl -sf "http://$addr/-/ready" >/dev/null && break; sleep 0.1; done
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

start_vg 1s
kill "$vg_pid"; wait "$vg_pid" 2>/dev/null || true # creates the schema
python3 - "$work/state/vramguard.db" <<'PY'
import sqlite3, sys, time, math
db = sqlite3.connect(sys.argv[1])
now = time.time()
rows = [(now - 86400 + i * 5, 30 + 10 * math.sin(i / 50), 20.0, 62.7, 32.0, 50.0, 600000.0, 655360.0, 91.5)
        for i in range(17280)]
db.executemany("INSERT INTO history (ts, cpu_percent, ram_used_gb, ram_total_gb, ram_percent, gpu_percent,"
               " vram_used_mb, vram_total_mb, vram_percent) VALUES (?,?,?,?,?,?,?,?,?)", rows)
db.commit()
PY
start_vg 1s
sleep 2
rss_start=$(rss_kib "$vg_pid")

prometheus-node-exporter --web.listen-address=127.0.0.1:19101 >/dev/null 2>&1 &
ne_pid=$!
pids+=("$ne_pid")
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:19101/metrics >/dev/null && break; sleep 0.1; done

wrk_run() { # threads connections url [pid] -> "p50_ms p99_ms rps cpu_us_per_request" (the last with a pid:
  # that process's CPU time, user + system, over the run divided by the requests answered)
  local c0=0 c1=0 out
  [ -n "${4:-}" ] && c0=$(cpu_ticks "$4")
  out=$(wrk -t"$1" -c"$2" -d10s --latency "$3")
  [ -n "${4:-}" ] && c1=$(cpu_ticks "$4")
  awk -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /^Requests\/sec/ {rps=$2} / requests in / {n=$1}
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    END {printf "%.3f %.3f %s %.1f\n", ms(p50), ms(p99), rps, (n > 0 ? c / hz / n * 1e6 : 0)}' <<<"$out"
}

# /metrics on one connection: 8 GPUs x 32 processes, against node_exporter's.
echo "== /metrics, 1 connection" >&2
read -r vg_p50 vg_p99 vg_rps vg_cpu < <(wrk_run 1 1 "http://$addr/metrics" "$vg_pid")
read -r ne_p50 ne_p99 ne_rps ne_cpu < <(wrk_run 1 1 "http://127.0.0.1:19101/metrics" "$ne_pid")
ratio=$(awk -v a="$vg_p50" -v b="$ne_p50" 'BEGIN {printf "%.3f", a / b}')
# The floor for that: the hello-world answering a body of the exposition's size, one connection.
curl -s -o "$work/metrics-body.txt" "http://$addr/metrics"
metrics_bytes=$(wc -c <"$work/metrics-body.txt")
"$hello" "$work/metrics-body.txt" 2>"$work/hello-metrics.log" &
hm_pid=$!
pids+=("$hm_pid")
hm_addr=$(listen_addr "$work/hello-metrics.log")
read -r hm_p50 hm_p99 hm_rps hm_cpu < <(wrk_run 1 1 "http://$hm_addr/api/v1/system/resource-check" "$hm_pid")

# What a real Prometheus does: one scrape per sample on a kept-alive connection. vramguard samples
# every second; wrk waits 1.1 s between requests (its latency excludes the wait), so every scrape
# follows a new sample and renders a new exposition. Against node_exporter (which renders every
# scrape) and the hello-world serving a body of the exposition's size, each for 26 s (at least 20
# scrapes).
cat >"$work/per-sample.lua" <<'LUA'
function delay() return 1100 end
LUA
per_sample() { # url -> "p50_ms p99_ms requests"
  wrk -t1 -c1 -d26s --latency -s "$work/per-sample.lua" "$1" | awk '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} / requests in / {n=$1}
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    END {printf "%.3f %.3f %d\n", ms(p50), ms(p99), n}'
}
echo "== /metrics, one scrape per new sample (26 s each: vramguard, node_exporter, hello-world)" >&2
read -r ns_vg_p50 ns_vg_p99 ns_vg_n < <(per_sample "http://$addr/metrics")
read -r ns_ne_p50 ns_ne_p99 ns_ne_n < <(per_sample "http://127.0.0.1:19101/metrics")
read -r ns_hm_p50 ns_hm_p99 ns_hm_n < <(per_sample "http://$hm_addr/api/v1/system/resource-check")
kill "$hm_pid"; wait "$hm_pid" 2>/dev/null || true
ns_floor=$(awk -v a="$ns_vg_p50" -v f="$ns_hm_p50" 'BEGIN {printf "%.2f", a / f}')
ns_above=$(awk -v a="$ns_vg_p50" -v n="$ns_ne_p50" -v f="$ns_hm_p50" 'BEGIN {d = n - f; printf "%.3f", (d > 0 ? (a - f) / d : 0)}')

# The same on the issue's small box: 2 GPUs with 3 compute processes, its own vramguard (sampling
# every second) and its own floor (the hello-world serving that exposition's size); node_exporter's
# figure is the one above (the same machine).
{
  for g in 0 1; do
    echo "[gpu]"
    echo "name NVIDIA GeForce RTX 4090"
    echo "memory_total $((24 * 1024 * 1024 * 1024))"
    echo "memory_used $(((4 + g * 6) * 1024 * 1024 * 1024))"
    echo "utilization_gpu $((30 + g * 40))"
    echo "temperature $((50 + g))"
    echo "power_mw $((200000 + g * 50000))"
    for p in $(seq 0 "$g"); do echo "process $((2000 + g * 10 + p)) $((3 * 1024 * 1024 * 1024))"; done
  done
} >"$work/scenario-small.txt"
mkdir -p "$work/state-small"
cat >"$work/config-small.yaml" <<CONF
listen: "127.0.0.1:0"
sample_interval: "1s"
state_dir: "$work/state-small"
gpu: { nvml_library: "$fake" }
CONF
FAKE_NVML_SCENARIO="$work/scenario-small.txt" env -u MALLOC_ARENA_MAX "$bin" --config "$work/config-small.yaml" 2>"$work/vg-small.log" &
sm_pid=$!
pids+=("$sm_pid")
sm_addr=$(listen_addr "$work/vg-small.log")
for _ in $(seq 1 100); do curl -sf "http://$sm_addr/-/ready" >/dev/null && break; sleep 0.1; done
sleep 2
curl -s -o "$work/metrics-small.txt" "http://$sm_addr/metrics"
"$hello" "$work/metrics-small.txt" 2>"$work/hello-small.log" &
hs_pid=$!
pids+=("$hs_pid")
hs_addr=$(listen_addr "$work/hello-small.log")
echo "== /metrics, one scrape per new sample, 2 GPUs x 3 processes (26 s each: vramguard, hello-world)" >&2
read -r sm_p50 sm_p99 sm_n < <(per_sample "http://$sm_addr/metrics")
read -r hs_p50 hs_p99 hs_n < <(per_sample "http://$hs_addr/api/v1/system/resource-check")
kill "$sm_pid" "$hs_pid"; wait "$sm_pid" "$hs_pid" 2>/dev/null || true
sm_bytes=$(wc -c <"$work/metrics-small.txt")
sm_floor=$(awk -v a="$sm_p50" -v f="$hs_p50" 'BEGIN {printf "%.2f", a / f}')
sm_above=$(awk -v a="$sm_p50" -v n="$ns_ne_p50" -v f="$hs_p50" 'BEGIN {d = n - f; printf "%.3f", (d > 0 ? (a - f) / d : 0)}')

# resource-check against the hello-world limit: the same wrk settings, in turn, BENCH_ROUNDS times.
# One wrk thread for 50 connections: on a 2-core machine a second wrk thread takes the core the
# server needs (both servers run `http.worker_threads`' default of one worker), and the p99 then
# measures the scheduler's time slices. One informational round with -t2 follows.
rc_path="/api/v1/system/resource-check?vram_required_gb=9.5"
curl -sf -o "$work/rc-body.json" "http://$addr$rc_path"
vg_head=$(curl -s -D - -o /dev/null "http://$addr$rc_path" | wc -c)
"$hello" "$work/rc-body.json" 2>"$work/hello.log" &
hello_pid=$!
pids+=("$hello_pid")
hello_addr=$(listen_addr "$work/hello.log")
hello_head=$(curl -s -D - -o /dev/null "http://$hello_addr$rc_path" | wc -c)
body_bytes=$(wc -c <"$work/rc-body.json")
# What pipelines ask: many distinct questions (1,200: 4 workloads (the default one and three built-in
# profiles by name) x 5 video sides x 5 frame counts x model loaded or not x 6 sizes (the
# estimate, or the job's own figure of 6 to 70 GiB)), each connection walking the list from its own
# place, so the kept answers almost never hold the next one. Against the hello-world's fixed
# answer (the repeated question's, about 630 bytes; distinct answers are that size or, with
# recommendations, up to about 1,350 bytes, and more so while the load's CPU use refuses them),
# wrk -t1 -c50 -d10s.
cat >"$work/distinct.lua" <<'LUA'
local paths = {}
local workloads = {"", "&workload=wan2.2-ti2v-5b", "&workload=wan2.2-t2v-a14b", "&workload=wan2.2-i2v-a14b"}
local sides = {{832, 480}, {480, 832}, {1280, 704}, {704, 1280}, {1280, 720}}
local frames = {17, 33, 49, 81, 121}
local sizes = {"", "&vram_required_gb=6", "&vram_required_gb=12", "&vram_required_gb=24", "&vram_required_gb=48",
  "&vram_required_gb=70"}
for _, w in ipairs(workloads) do
  for _, side in ipairs(sides) do
    for _, f in ipairs(frames) do
      for _, loaded in ipairs({"false", "true"}) do
        for _, size in ipairs(sizes) do
          paths[#paths + 1] = string.format("/api/v1/system/resource-check?width=%d&height=%d&frames=%d&model_loaded=%s%s%s",
            side[1], side[2], f, loaded, size, w)
        end
      end
    end
  end
end
local n = 0
function init(args) n = math.random(#paths) end
function request()
  n = n % #paths + 1
  return wrk.format("GET", paths[n])
end
LUA
distinct() { # url pid -> "p50_ms p99_ms rps"
  wrk -t1 -c50 -d10s --latency -s "$work/distinct.lua" "$1" | awk '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /^Requests\/sec/ {rps=$2}
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    END {printf "%.3f %.3f %s\n", ms(p50), ms(p99), rps}'
}
echo "== resource-check, 1,200 distinct questions: vramguard, then hello-world (wrk -t1 -c50 -d10s)" >&2
read -r dq_vg_p50 dq_vg_p99 dq_vg_rps < <(distinct "http://$addr")
read -r dq_hw_p50 dq_hw_p99 dq_hw_rps < <(distinct "http://$hello_addr")
dq_ratio=$(awk -v a="$dq_vg_rps" -v b="$dq_hw_rps" 'BEGIN {printf "%.3f", a / b}')
dq_p99_over=$(awk -v a="$dq_vg_p99" -v b="$dq_hw_p99" 'BEGIN {printf "%.3f", a - b}')

: >"$work/rounds.txt"
for r in $(seq 1 "$rounds"); do
  echo "== resource-check round $r/$rounds: vramguard, then hello-world (wrk -t1 -c50 -d10s)" >&2
  read -r a50 a99 arps acpu < <(wrk_run 1 50 "http://$addr$rc_path" "$vg_pid")
  read -r b50 b99 brps bcpu < <(wrk_run 1 50 "http://$hello_addr$rc_path" "$hello_pid")
  echo "$r $arps $a50 $a99 $brps $b50 $b99 $acpu $bcpu" >>"$work/rounds.txt"
done
echo "== resource-check, wrk -t2 -c50 -d10s (informational)" >&2
read -r t2a50 t2a99 t2arps _ < <(wrk_run 2 50 "http://$addr$rc_path" "$vg_pid")
read -r t2b50 t2b99 t2brps _ < <(wrk_run 2 50 "http://$hello_addr$rc_path" "$hello_pid")
t2ratio=$(awk -v a="$t2arps" -v b="$t2brps" 'BEGIN {printf "%.3f", a / b}')
# Means over the rounds; the p99 reported is the worst round's.
read -r rc_rps rc_p50 rc_p99 hw_rps hw_p50 hw_p99 rc_ratio rc_cpu hw_cpu < <(awk '
  {ar += $2; a50 += $3; if ($4 > a99) a99 = $4; br += $5; b50 += $6; if ($7 > b99) b99 = $7; ac += $8; bc += $9; n++}
  END {printf "%.0f %.3f %.3f %.0f %.3f %.3f %.3f %.1f %.1f\n", ar / n, a50 / n, a99, br / n, b50 / n, b99, ar / br, ac / n, bc / n}' "$work/rounds.txt")
rounds_text=$(awk '{printf "round %d: vramguard %s req/s (p50 %s, p99 %s ms, %s µs CPU a request), hello-world %s req/s (p50 %s, p99 %s ms, %s µs CPU a request), ratio %.3f\n",
  $1, $2, $3, $4, $8, $5, $6, $7, $9, $2 / $5}' "$work/rounds.txt")

# Where the time goes: perf profiles of vramguard under resource-check and /metrics load, with
# call graphs (DWARF unwinding: the release build keeps no frame pointers), summed into the
# categories below: "incl" is the largest inclusive share of a frame whose name contains one of
# the ';'-separated strings, "self" the sum of their own time. Shares are of all of vramguard's
# samples in the window (its threads, kernel included).
cat >"$work/rc.categories" <<'CAT'
the connection task: read, parse, route, answer, write (hyper dispatch)|incl|Dispatcher<D,Bs,I,T>::poll_catch
write the response: writev, the kernel's TCP send and loopback delivery|incl|__GI___writev
read the request: recv|incl|__libc_recv
parse the HTTP request (hyper, httparse)|incl|Http1Transaction>::parse
query string into the request type (urlencoded, serde_json::Value, serde_path_to_error)|incl|serde_path_to_error::de::deserialize;serde_urlencoded::de
the decision: Decisions::resource_check_json (view, policy, counter, JSON)|incl|Decisions::resource_check_json;Decisions>::resource_check_json
… the live view (Inputs::view_at: leases, outstanding VRAM)|incl|Inputs::view_at;Inputs>::view_at
… the pure decision (policy::admission::resource_check)|incl|vramguard::policy::admission::resource_check
the JSON answer (Json::into_response, serde_json)|incl|axum::json::Json<T> as axum_core::response::into_response::IntoResponse>::into_response;Serialize for vramguard::policy::admission::ResourceCheck>::serialize
AppState clone + drop, self (one per extractor and middleware)|self|<vramguard::app::AppState as core::clone::Clone>::clone;drop_in_place<vramguard::app::AppState>
router service clones (tower clone_box)|incl|CloneService<R>>::clone_box
tracing, self|self|tracing_core::;tracing::;tracing_subscriber::
lock waits: futex system calls|incl|__x64_sys_futex
malloc and free, self|self|malloc;_int_free;cfree@;unlink_chunk;realloc
scheduler: context switches and wake-ups (kernel; cpu-clock samples taken with interrupts off land here too), self|self|finish_task_switch;_raw_spin_unlock_irqrestore;__schedule;try_to_wake_up
CAT
cat >"$work/metrics.categories" <<'CAT'
the whole exposition: Decisions::render_metrics|incl|Decisions::render_metrics;Decisions>::render_metrics
… health for the state set|incl|vramguard::policy::health::health
… generations_that_fit (one resource_check per slot and profile)|incl|generations_that_fit
… Metrics::render_cached (the whole text from its parts)|incl|Metrics>::render_cached;Metrics::render_cached
… … registry.gather (counters, histogram, process collector)|incl|prometheus::registry::Registry::gather
… … … the process collector (reads /proc/self)|incl|ProcessCollector as prometheus::metrics::Collector>::collect
… … snapshot_families (the snapshot's series, built)|incl|snapshot_families
… … text encoding (prometheus TextEncoder)|incl|TextEncoder::encode_impl
write the response: writev, the kernel's TCP send and loopback delivery|incl|__GI___writev
read the request: recv|incl|__libc_recv
AppState clone + drop, self|self|<vramguard::app::AppState as core::clone::Clone>::clone;drop_in_place<vramguard::app::AppState>
malloc and free, self|self|malloc;_int_free;cfree@;unlink_chunk;realloc
scheduler: context switches and wake-ups (kernel; cpu-clock samples taken with interrupts off land here too), self|self|finish_task_switch;_raw_spin_unlock_irqrestore;__schedule;try_to_wake_up
CAT
categories() { # perf.data categories-file -> Markdown rows
  perf report -i "$1" --stdio --children --sort symbol -g none 2>/dev/null | grep -E '^ +[0-9.]+%' >"$work/syms.txt"
  awk -F'|' -v syms="$work/syms.txt" '
    BEGIN {
      while ((getline line < syms) > 0) {
        n++; split(line, f, " "); ch[n] = f[1] + 0; se[n] = f[2] + 0
        sub(/^ *[0-9.]+% +[0-9.]+% +\[[^]]*\] /, "", line); name[n] = line
      }
    }
    {
      np = split($3, pats, ";"); v = 0; matched = 0
      for (i = 1; i <= n; i++) {
        hit = 0
        for (j = 1; j <= np; j++) if (index(name[i], pats[j])) hit = 1
        if (!hit) continue
        matched = 1
        if ($2 == "incl") { if (ch[i] > v) v = ch[i] } else v += se[i]
      }
      # A pattern that matched no symbol says nothing about the time spent: n/a, not 0.0 %.
      if (matched) printf "| %s | %.1f %% |\n", $1, v
      else printf "| %s | n/a (no symbol matched) |\n", $1
    }' "$2"
}
profile() { # label categories seconds wrk-args... -> a section of the report
  local label=$1 cats=$2 secs=$3
  shift 3
  wrk "$@" >/dev/null 2>&1 &
  local wrk_pid=$!
  sleep 1
  if ! perf record -e "$perf_event" -F 499 --call-graph dwarf,8192 -p "$vg_pid" -o "$work/perf.data" \
    -- sleep "$secs" >/dev/null 2>"$work/perf.err"; then
    kill "$wrk_pid" 2>/dev/null || true; wait "$wrk_pid" 2>/dev/null || true
    echo "perf record failed: $(tail -1 "$work/perf.err")"
    return
  fi
  wait "$wrk_pid" 2>/dev/null || true
  echo "#### $label: where vramguard's CPU time goes (perf, $perf_event at 499 Hz, $secs s)"
  echo
  echo "| part | share of vramguard's samples |"
  echo "|---|---|"
  categories "$work/perf.data" "$cats"
  echo
  echo "By shared object, then the top symbols by self time:"
  echo
  echo '```'
  perf report -i "$work/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null | grep -E '^ +[0-9]' | head -6
  echo
  perf report -i "$work/perf.data" --stdio --no-children --sort dso,symbol -g none 2>/dev/null |
    grep -E '^ +[0-9]' | head -20 | cut -c1-150 | sed 's/ *$//'
  echo '```'
}
perf_text="perf: not run (BENCH_PERF=0)"
if [ "${BENCH_PERF:-1}" != 0 ]; then
  if ! command -v perf >/dev/null; then
    perf_text="perf: unavailable (linux-perf is not installed)"
  else
    # Hardware counters are often missing in a VM; the kernel's timer (cpu-clock) samples as well.
    if perf stat -e instructions true 2>&1 | grep -q 'not supported\|not counted'; then
      perf_event=cpu-clock
      hw_note="Hardware counters are not available here (\`perf stat -e instructions true\`: not supported), so the profiles sample on the cpu-clock timer"
    else
      perf_event=cycles
      hw_note="Sampling on hardware cycles"
    fi
    if perf record -e "$perf_event" -o "$work/perf-probe.data" -- true >/dev/null 2>&1; then
      echo "== perf profiles" >&2
      perf_text="$hw_note; the load runs while perf records, after the measured runs above."$'\n\n'
      perf_text+=$(profile "resource-check, wrk -t1 -c50" "$work/rc.categories" 5 -t1 -c50 -d7s "http://$addr$rc_path")$'\n\n'
      perf_text+=$(profile "/metrics, wrk -t1 -c1" "$work/metrics.categories" 5 -t1 -c1 -d7s "http://$addr/metrics")
    else
      perf_text="perf: unavailable here (perf record fails: $(perf record -e "$perf_event" -o "$work/perf-probe.data" -- true 2>&1 | tail -1))"
    fi
  fi
fi

# Leases: 50 connections at the limit of 10 live leases (SPEC's maximum), two wrk threads. Each
# thread keeps the ids its connections were granted and releases one before its next take, so
# every granted lease is released. Two client patterns: waiting clients (POST with wait_seconds,
# as the Python client and the queue workers do: a request that finds no slot is held until a
# release frees one, and the release and the next grant share one commit), and clients that are
# refused at once and retry at once (no wait_seconds: 40 of the 50 connections spend their time
# on refusals).
lease_lua() { # $1 = extra JSON fields of the POST body
  cat <<LUA
local ids = {}
granted, refused = 0, 0
threads = {}
function setup(thread) table.insert(threads, thread) end
function request()
  local id = table.remove(ids)
  if id then return wrk.format("DELETE", "/api/v1/system/generations/" .. id) end
  return wrk.format("POST", "/api/v1/system/generations", {["Content-Type"] = "application/json"},
    '{"vram_required_gb": 0.1, "ttl_seconds": 60, "client": "bench"$1}')
end
function response(status, headers, body)
  if status == 201 then table.insert(ids, body:match('"id":"(%x+)"')); granted = granted + 1
  elseif status == 409 then refused = refused + 1 end
end
function done(summary, latency, requests)
  local g, r = 0, 0
  for _, t in ipairs(threads) do g = g + t:get("granted"); r = r + t:get("refused") end
  io.write(string.format("LEASES %d %d %.3f %.3f\n", g, r, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA
}
lease_lua ', "wait_seconds": 10' >"$work/lease-wait.lua"
lease_lua '' >"$work/lease-retry.lua"
echo "== leases, 50 connections, waiting clients" >&2
lease_out=$(wrk -t2 -c50 -d10s -s "$work/lease-wait.lua" "http://$addr" 2>&1)
read -r _ l_granted l_refused l_p50 l_p99 < <(grep '^LEASES' <<<"$lease_out")
pairs_per_s=$(awk -v g="$l_granted" 'BEGIN {printf "%.0f", g / 10}')
# wrk stops mid-cycle: leases it was granted but did not release yet stay live for their TTL.
# Release them, so the next run starts with every slot free.
release_all() {
  curl -s "http://$addr/api/v1/system/generations" |
    python3 -c 'import json, sys; print("\n".join(l["id"] for l in json.load(sys.stdin)["leases"]))' |
    while read -r id; do curl -s -o /dev/null -X DELETE "http://$addr/api/v1/system/generations/$id"; done
}
sleep 1
release_all
echo "== leases, 50 connections, clients that retry at once" >&2
retry_out=$(wrk -t2 -c50 -d10s -s "$work/lease-retry.lua" "http://$addr" 2>&1)
read -r _ r_granted r_refused r_p50 r_p99 < <(grep '^LEASES' <<<"$retry_out")
retry_pairs_per_s=$(awk -v g="$r_granted" 'BEGIN {printf "%.0f", g / 10}')
decisions_per_s=$(awk -v g="$r_granted" -v r="$r_refused" 'BEGIN {printf "%.0f", (g + r) / 10}')
sleep 1
release_all

# History query over the pre-filled day, through HTTP: the first (cold) one, then the median of 10.
hist_url="http://$addr/api/v1/system/stats/history?hours=24&max_points=1000"
hist_cold=$(curl -s -o /dev/null -w '%{time_total}' "$hist_url" | awk '{printf "%.1f", $1 * 1000}')
hist_ms=$(for _ in $(seq 1 10); do curl -s -o /dev/null -w '%{time_total}\n' "$hist_url"; done |
  sort -n | awk '{v[NR] = $1} END {printf "%.1f", (v[5] + v[6]) / 2 * 1000}')

# Sampler cost per tick.
sample_cost() {
  local h=0 g=0
  for _ in 1 2 3 4 5; do
    read -r hh gg < <(curl -s "http://$addr/metrics" | awk '
      /^vramguard_collector_duration_seconds\{collector="host"\}/ {h=$2}
      /^vramguard_collector_duration_seconds\{collector="gpu"\}/ {g=$2}
      END {print h * 1e6, g * 1e6}')
    h=$(awk -v a="$h" -v b="$hh" 'BEGIN {print a + b}'); g=$(awk -v a="$g" -v b="$gg" 'BEGIN {print a + b}')
    sleep 1.05
  done
  awk -v h="$h" -v g="$g" 'BEGIN {printf "%.0f %.0f\n", h / 5, g / 5}'
}
read -r host_us gpu_us < <(sample_cost)

# Idle CPU over 60 s at a 1 s sample interval (no load, history recording on): the whole
# process, from perf's task-clock (nanoseconds, every thread, those that end included) where perf
# runs, else from utime + stime (10 ms ticks: 0.017 % steps over 60 s); and apart from it the XID
# event thread (it waits in the fake NVML, which sleeps on inotify like the real NVML sleeps in
# the driver), its exact CPU time from schedstat.
xid_ns() {
  local t
  for t in /proc/"$vg_pid"/task/*; do
    [ "$(cat "$t/comm" 2>/dev/null)" = vramguard-xid ] && { awk '{print $1}' "$t/schedstat"; return; }
  done
  echo 0
}
echo "== idle, 60 s" >&2
hz=$(getconf CLK_TCK)
t0=$(cpu_ticks "$vg_pid"); x0=$(xid_ns)
idle_how="utime + stime"
if command -v perf >/dev/null && perf stat -e task-clock -p "$vg_pid" -o "$work/idle.stat" -- sleep 60 2>/dev/null; then
  idle_cpu=$(awk '/task-clock/ {gsub(",", "", $1); printf "%.3f", $1 / 1000 / 60 * 100}' "$work/idle.stat")
  idle_how="perf task-clock"
else
  sleep 60
  t1=$(cpu_ticks "$vg_pid")
  idle_cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN {printf "%.3f", (b - a) / hz / 60 * 100}')
fi
x1=$(xid_ns)
idle_xid=$(awk -v a="$x0" -v b="$x1" 'BEGIN {printf "%.3f", (b - a) / 1e9 / 60 * 100}')
idle_rest=$(awk -v a="$idle_cpu" -v b="$idle_xid" 'BEGIN {v = a - b; printf "%.3f", v < 0 ? 0 : v}')
rss_after=$(rss_kib "$vg_pid")

# A WebSocket client that never reads, 30 s at a 250 ms sample interval.
kill "$vg_pid"; wait "$vg_pid" 2>/dev/null || true
start_vg 250ms
ws_before=$(rss_kib "$vg_pid")
python3 - "$addr" <<'PY' &
import socket, sys, time, base64, os
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(f"GET /api/v1/system/stats/ws HTTP/1.1\r\nHost: {sys.argv[1]}\r\nUpgrade: websocket\r\n"
          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
time.sleep(31)  # never read
PY
ws_pid=$!
echo "== WebSocket client that never reads, 30 s" >&2
sleep 30
ws_after=$(rss_kib "$vg_pid")
kill "$ws_pid" 2>/dev/null || true

met() { # value op target -> yes/no
  awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {ok = (op == "<=") ? (v <= t) : (v >= t); print ok ? "**yes**" : "no"}'
}
cat <<TABLE

vramguard benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), revision $(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes)')

Headline: the cases users hit.

| measure | vramguard | peer in the same run | target | met |
|---|---|---|---|---|
| /metrics after a new sample: p50 / p99 (ms), one scrape per sample on a kept-alive connection, 8 GPUs × 32 processes, $ns_vg_n scrapes | $ns_vg_p50 / $ns_vg_p99 | node_exporter $ns_ne_p50 / $ns_ne_p99 ($ns_ne_n); hello-world with a body of the same size $ns_hm_p50 / $ns_hm_p99 ($ns_hm_n) | | |
| … vramguard's p50 / the hello-world floor's | $ns_floor | | ≤ 1.5 (#26) | $(met "$ns_floor" "<=" 1.5) |
| … vramguard above the floor / node_exporter above the floor (p50) | $ns_above | | ≤ 0.05 (1/20, #26) | $(met "$ns_above" "<=" 0.05) |
| /metrics after a new sample, 2 GPUs × 3 processes ($sm_bytes bytes), $sm_n scrapes: p50 / p99 (ms) | $sm_p50 / $sm_p99 | hello-world with a body of the same size $hs_p50 / $hs_p99 ($hs_n); node_exporter as above | | |
| … vramguard's p50 / the hello-world floor's | $sm_floor | | ≤ 1.5 (#26) | $(met "$sm_floor" "<=" 1.5) |
| … vramguard above the floor / node_exporter above the floor (p50) | $sm_above | | ≤ 0.05 (1/20, #26) | $(met "$sm_above" "<=" 0.05) |
| resource-check over 1,200 distinct questions, wrk -t1 -c50 -d10s: requests/s | $dq_vg_rps | hello-world $dq_hw_rps | | |
| … vramguard / hello-world requests/s | $dq_ratio | | ≥ 0.8 (#26) | $(met "$dq_ratio" ">=" 0.8) |
| … p50 / p99 (ms); p99 above the hello-world's | $dq_vg_p50 / $dq_vg_p99; $dq_p99_over | hello-world $dq_hw_p50 / $dq_hw_p99 | p99 ≤ hello-world + 0.5 (#26) | $(met "$dq_p99_over" "<=" 0.5) |

Kept answers (second rows): /metrics scraped back to back reuses the previous bytes (at most 1 s);
resource-check asked one question over and over is answered from the kept JSON.

| measure | vramguard | peer in the same run | target (#16) | met |
|---|---|---|---|---|
| /metrics back to back (kept exposition) p50 latency, 1 connection, 8 GPUs × 32 processes (ms) | $vg_p50 | node_exporter $ne_p50; hello-world with the same body $hm_p50 | ≤ 0.100 | $(met "$vg_p50" "<=" 0.100) |
| /metrics back to back p50, vramguard / node_exporter | $ratio | | ≤ 0.020 (1/50) | $(met "$ratio" "<=" 0.020) |
| /metrics p99 latency, 1 connection (ms) | $vg_p99 | node_exporter $ne_p99; hello-world $hm_p99 | | |
| /metrics requests/s, 1 connection | $vg_rps | node_exporter $ne_rps; hello-world $hm_rps | | |
| /metrics server CPU per request (µs) | $vg_cpu | node_exporter $ne_cpu; hello-world $hm_cpu | | |
| /metrics body (bytes) | $metrics_bytes | | | |
| resource-check, one repeated question (kept answer), requests/s, wrk -t1 -c50 -d10s, mean of $rounds rounds | $rc_rps | hello-world $hw_rps | | |
| resource-check / hello-world requests/s | $rc_ratio | | ≥ 0.8 | $(met "$rc_ratio" ">=" 0.8) |
| resource-check p99 latency, 50 connections, worst round (ms) | $rc_p99 | hello-world $hw_p99 | ≤ 2 | $(met "$rc_p99" "<=" 2) |
| resource-check p50 latency, mean of rounds (ms) | $rc_p50 | hello-world $hw_p50 | | |
| resource-check with wrk -t2 -c50 (one round): requests/s, p99 (ms), ratio | $t2arps, $t2a99, $t2ratio | hello-world $t2brps, $t2b99 | | |
| resource-check server CPU per request, 50 connections (µs) | $rc_cpu | hello-world $hw_cpu | | |
| resource-check response: headers + body (bytes) | $vg_head + $body_bytes | hello-world $hello_head + $body_bytes | same body size | |
| lease take + release pairs/s, 50 waiting connections (limit 10, wait_seconds) | $pairs_per_s | | ≥ 10,000 | $(met "$pairs_per_s" ">=" 10000) |
| … request p50 / p99 latency, waits included (ms) | $l_p50 / $l_p99 | | | |
| lease take + release pairs/s, 50 connections retrying at once (limit 10) | $retry_pairs_per_s | | | |
| … decisions/s (granted + refused) / p50 / p99 (ms) | $decisions_per_s / $r_p50 / $r_p99 | | | |
| history: 24 h at 5 s into 1,000 buckets over HTTP, median of 10 / first (ms) | $hist_ms / $hist_cold | | ≤ 20 | $(met "$hist_ms" "<=" 20) |
| sampler cost per tick: host / gpu (8 GPUs, 32 processes) (µs) | $host_us / $gpu_us | | | |
| idle CPU at 1 s sample interval, 60 s, $idle_how (% of one core) | $idle_cpu | | ≤ 0.1 | $(met "$idle_cpu" "<=" 0.1) |
| … of which the XID thread waiting in the fake NVML / the rest (% of one core) | $idle_xid / $idle_rest | | | |
| RSS after start with 24 h of history (MiB) | $(mib "$rss_start") | | ≤ 20 | $(met "$(mib "$rss_start")" "<=" 20) |
| RSS after the whole bench, no MALLOC_ARENA_MAX (MiB) | $(mib "$rss_after") | | ≤ 16 | $(met "$(mib "$rss_after")" "<=" 16) |
| RSS with a WebSocket client that never reads: before / after 30 s (MiB) | $(mib "$ws_before") / $(mib "$ws_after") | | flat | |

resource-check rounds (each 10 s, vramguard then hello-world):
$rounds_text

$perf_text
TABLE
if [ "$curve" = 1 ]; then
  echo
  cat "$work/curve.md"
fi
