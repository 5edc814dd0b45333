#!/usr/bin/env bash
# Load and cost benchmark of vramguard against the real binary, with prometheus-node-exporter as
# the side-by-side peer. Prints one table; BENCHMARKS.md records a run of it.
#
#   scripts/bench.sh            (about 3 minutes after the release build)
#
# Needs: wrk, prometheus-node-exporter, python3 (installed from Debian if missing, as root).
# Everything runs on loopback; every load step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v prometheus-node-exporter >/dev/null || need+=(prometheus-node-exporter)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --release --quiet
bin=target/release/vramguard
fake=$(ls -t target/release/build/vramguard-*/out/libnvidia-ml-fake.so | head -1)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# 8 GPUs with 4 compute processes each.
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
  FAKE_NVML_SCENARIO="$work/scenario.txt" "$bin" --config "$work/config.yaml" 2>"$work/vg.log" &
  vg_pid=$!
  pids+=("$vg_pid")
  addr=""
  for _ in $(seq 1 100); do
    addr=$(grep -o 'listening on http://[0-9.:]*' "$work/vg.log" | head -1 | sed 's|listening on http://||') || true
    [ -n "${addr:-}" ] && break
    sleep 0.1
  done
  for _ in $(seq 1 100); do curl -sf "http://$addr/-/ready" >/dev/null && break; sleep 0.1; done
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

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

wrk_latency() { # url -> "p50_ms p99_ms rps"
  wrk -t1 -c1 -d10s --latency "$1" | awk '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /^Requests\/sec/ {rps=$2}
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    END {printf "%.3f %.3f %s\n", ms(p50), ms(p99), rps}'
}
read -r vg_p50 vg_p99 vg_rps < <(wrk_latency "http://$addr/metrics")
read -r ne_p50 ne_p99 ne_rps < <(wrk_latency "http://127.0.0.1:19101/metrics")
ratio=$(awk -v a="$vg_p50" -v b="$ne_p50" 'BEGIN {printf "%.3f", a / b}')

read -r rc_p50 rc_p99 rc_rps < <(wrk -t2 -c50 -d10s --latency \
  "http://$addr/api/v1/system/resource-check?vram_required_gb=9.5" | awk '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /^Requests\/sec/ {rps=$2}
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    END {printf "%.3f %.3f %s\n", ms(p50), ms(p99), rps}')

# Leases: 50 connections, each its own wrk thread, alternating POST (take) and DELETE (release).
cat >"$work/lease.lua" <<'LUA'
local id = nil
granted, refused = 0, 0
function setup(thread) table.insert(threads, thread) end
threads = {}
function request()
  if id then
    local path = "/api/v1/system/generations/" .. id
    id = nil
    return wrk.format("DELETE", path)
  end
  return wrk.format("POST", "/api/v1/system/generations", {["Content-Type"] = "application/json"},
    '{"vram_required_gb": 0.1, "ttl_seconds": 60, "client": "bench"}')
end
function response(status, headers, body)
  if status == 201 then id = body:match('"id":"(%x+)"'); granted = granted + 1
  elseif status == 409 then refused = refused + 1 end
end
function done(summary, latency, requests)
  local g, r = 0, 0
  for _, t in ipairs(threads) do g = g + t:get("granted"); r = r + t:get("refused") end
  io.write(string.format("LEASES %d %d %.3f %.3f\n", g, r, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA
lease_out=$(wrk -t50 -c50 -d10s -s "$work/lease.lua" "http://$addr" 2>&1)
read -r _ l_granted l_refused l_p50 l_p99 < <(grep '^LEASES' <<<"$lease_out")
pairs_per_s=$(awk -v g="$l_granted" 'BEGIN {printf "%.0f", g / 10}')
decisions_per_s=$(awk -v g="$l_granted" -v r="$l_refused" 'BEGIN {printf "%.0f", (g + r) / 10}')

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

# Idle CPU over 60 s at a 1 s sample interval (no load, history recording on).
hz=$(getconf CLK_TCK)
t0=$(cpu_ticks "$vg_pid"); sleep 60; t1=$(cpu_ticks "$vg_pid")
idle_cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN {printf "%.3f", (b - a) / hz / 60 * 100}')
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
sleep 30
ws_after=$(rss_kib "$vg_pid")
kill "$ws_pid" 2>/dev/null || true

cat <<TABLE

vramguard benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)

| measure | vramguard | node_exporter | target |
|---|---|---|---|
| /metrics p50 latency, 1 connection (ms) | $vg_p50 | $ne_p50 | vramguard ≤ 1/10 of node_exporter (ratio $ratio) |
| /metrics p99 latency, 1 connection (ms) | $vg_p99 | $ne_p99 | |
| /metrics requests/s, 1 connection | $vg_rps | $ne_rps | |
| resource-check requests/s, 50 connections | $rc_rps | | ≥ 20,000 |
| resource-check p50 / p99 latency (ms) | $rc_p50 / $rc_p99 | | p99 ≤ 5 |
| lease POST+DELETE pairs/s, 50 connections (limit 10) | $pairs_per_s | | |
| lease decisions/s (granted + refused) | $decisions_per_s | | |
| lease request p50 / p99 latency (ms) | $l_p50 / $l_p99 | | |
| history: 24 h at 5 s into 1,000 buckets over HTTP, median of 10 / first (ms) | $hist_ms / $hist_cold | | ≤ 20 |
| sampler cost per tick: host / gpu (8 GPUs, 32 processes) (µs) | $host_us / $gpu_us | | |
| idle CPU at 1 s sample interval, 60 s (% of one core) | $idle_cpu | | ≤ 0.5 |
| RSS after start with 24 h of history (MiB) | $(awk -v k="$rss_start" 'BEGIN {printf "%.1f", k / 1024}') | | ≤ 20 |
| RSS after the load above and 60 s idle (MiB) | $(awk -v k="$rss_after" 'BEGIN {printf "%.1f", k / 1024}') | | ≤ 20 |
| RSS with a WebSocket client that never reads: before / after 30 s (MiB) | $(awk -v a="$ws_before" -v b="$ws_after" 'BEGIN {printf "%.1f / %.1f", a / 1024, b / 1024}') | | flat |
TABLE
