#!/usr/bin/env bash
# Before and after, side by side: runs criterion benchmarks of the cost curve for a git revision
# (in a temporary worktree, with that revision's own fake NVML) and then for the working tree,
# one right after the other on this machine, and prints both.
#
#   scripts/bench-compare.sh REV [FILTER]
#
# FILTER is a criterion filter; the default is one sample and one exposition at 8 GPUs x 32
# processes (the scripts/bench.sh box). Compare the two runs of one invocation only: the sample
# reads /proc (each process's lineage), whose cost drifts with what else the machine runs, so
# figures from different invocations differ by more than a change under test. About 5 minutes.
set -euo pipefail
rev=${1:?usage: scripts/bench-compare.sh REV [FILTER]}
filter=${2:-'cost_(sample|exposition)/32_processes/8_gpus'}
root=$(git rev-parse --show-toplevel)
target=${CARGO_TARGET_DIR:-$root/target}
tree=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"' EXIT
git -C "$root" worktree add --detach -f "$tree" "$rev" >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%FT%RZ)"
run() { # label, tree, target dir, note
    echo "== $1 ($(git -C "$2" rev-parse --short=12 HEAD)$4)"
    (cd "$2" && CARGO_TARGET_DIR=$3 cargo bench --quiet --bench cost_curve -- "$filter" 2>/dev/null |
        grep -E '^cost_|time:')
}
# The old revision builds in a target directory of its own: sharing one, the two revisions' build
# scripts (same package, same name) overwrite each other's output.
run before "$tree" "$target/bench-compare" ""
dirty=$(git -C "$root" status --porcelain | grep -q . && echo ", with uncommitted changes" || true)
run after "$root" "$target" "$dirty"
