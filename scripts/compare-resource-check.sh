#!/usr/bin/env bash
# resource-check throughput of two vramguard binaries in one run, alternating A B A B, with the
# same scenario (8 GPUs x 4 processes, fake NVML), config and wrk settings as scripts/bench.sh.
#
#   scripts/compare-resource-check.sh OLD_BINARY NEW_BINARY
#
# Needs wrk and a built fake NVML (any `cargo build`). Loopback only; each step runs 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
fake=$(ls -t target/*/build/vramguard-*/out/libnvidia-ml-fake.so | head -1)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
for g in 0 1 2 3 4 5 6 7; do
  echo "[gpu]"; echo "memory_total $((80 << 30))"; echo "memory_used $((g * 8 << 30))"
  for p in 0 1 2 3; do echo "process $((1000 + g * 10 + p)) $((2 << 30))"; done
done >"$work/scenario.txt"
run() { # binary label
  rm -rf "$work/state"
  cat >"$work/config.yaml" <<CONF
listen: "127.0.0.1:0"
state_dir: "$work/state"
gpu: { nvml_library: "$fake" }
constraints: { max_concurrent_generations: 10, cpu_warning_threshold: 1.0, ram_warning_threshold: 1.0 }
CONF
  FAKE_NVML_SCENARIO="$work/scenario.txt" "$1" --config "$work/config.yaml" 2>"$work/log" &
  local pid=$!
  local addr=""
  for _ in $(seq 100); do
    addr=$(grep -o 'listening on http://[0-9.:]*' "$work/log" | head -1 | sed 's|listening on http://||') || true
    [ -n "$addr" ] && break; sleep 0.1
  done
  until curl -sf "http://$addr/-/ready" >/dev/null; do sleep 0.1; done
  wrk -t2 -c50 -d10s --latency "http://$addr/api/v1/system/resource-check?vram_required_gb=9.5" |
    awk -v l="$2" '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {printf "%-4s %10s req/s  p50 %s  p99 %s\n", l, rps, p50, p99}'
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for round in 1 2; do run "$1" old; run "$2" new; done
