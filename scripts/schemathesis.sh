#!/usr/bin/env bash
# Fuzzes the JSON API against its own OpenAPI document with schemathesis: vramguard runs on
# loopback with the fake NVML (two GPUs) and a throwaway state directory.
#
#   scripts/schemathesis.sh [SECONDS]     (default 90; needs `cargo build` first)
#
# Checks: no 5xx, every response matches its documented status, content type and schema,
# schema-invalid requests are rejected, and schema-valid ones accepted (positive_data_acceptance),
# except on the operations scripts/schemathesis.toml names with the cross-field rule each has.
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${1:-90}"
venv="${SCHEMATHESIS_VENV:-target/schemathesis-venv}"
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi
bin=target/debug/vramguard
fake=$(ls target/debug/build/vramguard-*/out/libnvidia-ml-fake.so 2>/dev/null | head -1)
[ -x "$bin" ] && [ -n "$fake" ] || { echo "build first: cargo build" >&2; exit 2; }

work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat >"$work/scenario.txt" <<SCEN
[gpu]
memory_total 17179869184
memory_used 2147483648
utilization_gpu 35
temperature 61
power_mw 215500
process 4242 1073741824
[gpu]
memory_total 25769803776
memory_used 21474836480
utilization_gpu 90
temperature 75
power_mw 300000
SCEN
cat >"$work/config.yaml" <<CONF
listen: "127.0.0.1:0"
sample_interval: "500ms"
state_dir: "$work/state"
gpu: { nvml_library: "$fake" }
# Generated requests may ask to wait up to 300 s each for a slot; hold none of them for long.
queue: { max_wait: 1s }
CONF
FAKE_NVML_SCENARIO="$work/scenario.txt" "$bin" --config "$work/config.yaml" 2>"$work/log" &
pid=$!
addr=""
for _ in $(seq 1 100); do
  addr=$(grep -o 'listening on http://[0-9.:]*' "$work/log" | head -1 | sed 's|listening on http://||') || true
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/log"; echo "vramguard did not start" >&2; exit 1; }

"$venv/bin/st" --config-file scripts/schemathesis.toml run "http://$addr/api/v1/openapi.json" \
  --max-examples 30 --max-time "$budget" --wait-for-schema 10
