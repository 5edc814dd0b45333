#!/usr/bin/env bash
# How long one GPU collector pass takes when every nvmlDeviceGetPcieThroughput call waits as on a
# real driver (20 ms per direction), for a git revision and then for the working tree, each
# against the working tree's fake NVML (`pcie_window_ms 20`): 8 GPUs sampled every second, 16
# GPUs every 500 ms (the sampler's timeout is the interval, at least 500 ms), each scraped once a
# second for 8 seconds. Prints, per run, vramguard_collector_duration_seconds{collector="gpu"}
# (median and largest) and how many scrapes found the GPU collector failed.
#
#   scripts/pcie-wait.sh REV
#
# Debug builds: the figure is time spent waiting in the fake driver, not CPU. About 2 minutes once both are built.
set -euo pipefail
rev=${1:?usage: scripts/pcie-wait.sh REV}
root=$(git rev-parse --show-toplevel)
target=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d)
tree=$work/tree
trap 'git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1; rm -rf "$work"' EXIT
git -C "$root" worktree add --detach -f "$tree" "$rev" >/dev/null
(cd "$tree" && CARGO_TARGET_DIR=$target/bench-compare cargo build --quiet --bin vramguard)
(cd "$root" && cargo build --quiet --bin vramguard)
cc -O2 -shared -fPIC -o "$work/libnvml.so" "$root/tests/fake-nvml/fake_nvml.c" -lpthread -ldl
echo "machine: $(nproc) cores, $(date -u +%FT%RZ)"

measure() { # label, binary, gpus, interval
    local gpu="[gpu]\nmemory_total 51539607552\nutilization_gpu 50\npcie_tx_kbps 1000\npcie_rx_kbps 2000\npcie_window_ms 20\n"
    : >"$work/scenario.txt"
    for _ in $(seq "$3"); do printf "$gpu" >>"$work/scenario.txt"; done
    local port=$((20000 + RANDOM % 20000))
    cat >"$work/config.yaml" <<EOF
listen: "127.0.0.1:$port"
sample_interval: "$4"
state_dir: "$work/state-$1-$3"
gpu:
  nvml_library: "$work/libnvml.so"
EOF
    FAKE_NVML_SCENARIO=$work/scenario.txt "$2" --config "$work/config.yaml" 2>/dev/null &
    local pid=$! durations=() failed=0
    sleep 2
    for _ in $(seq 8); do
        local m
        m=$(curl -s "http://127.0.0.1:$port/metrics")
        durations+=("$(grep '^vramguard_collector_duration_seconds{collector="gpu"}' <<<"$m" | awk '{print $2}')")
        grep -q '^vramguard_collector_success{collector="gpu"} 0' <<<"$m" && failed=$((failed + 1))
        sleep 1
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    printf '%-7s %2s GPUs every %-5s: pass median %s s, largest %s s, failed samples %d of 8\n' "$1" "$3" "$4" \
        "$(printf '%s\n' "${durations[@]}" | sort -g | sed -n 4p)" \
        "$(printf '%s\n' "${durations[@]}" | sort -g | tail -1)" "$failed"
}
for case in "8 1s" "16 500ms"; do
    set -- $case
    measure "before" "$target/bench-compare/debug/vramguard" "$1" "$2"
    measure "after" "$target/debug/vramguard" "$1" "$2"
done
