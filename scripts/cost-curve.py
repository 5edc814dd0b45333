#!/usr/bin/env python3
"""The cost curve of `benches/cost_curve.rs`: a table and a PNG from criterion's output.

    scripts/cost-curve.py [CRITERION_DIR] [OUT_DIR]     (defaults: target/criterion, benchmarks)

Reads `CRITERION_DIR/cost_*/*/*/new/{benchmark,estimates}.json` (the median of each benchmark),
prints one Markdown table per group (time at N GPUs x P processes in total) with a least-squares
fit t = a + b*N + c*P, and writes OUT_DIR/cost-curve.csv (the numbers) and OUT_DIR/cost-curve.png
(the curves and the fitted lines, drawn by gnuplot). Python's standard library and gnuplot only.

Growth: the fit is called linear when it explains the points (R^2 >= 0.99) and no point is
farther from it than 5 % of the group's largest time; otherwise the table says "not linear" and
which point is off (relative to that point's own time too).
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import time

# Known groups in this order, with their titles; any other cost_* group follows under its name.
GROUPS = [
    ("cost_sample", "one sample: GPU collector pass (fake NVML)"),
    ("cost_exposition", "one exposition: Metrics::render"),
    ("cost_decision_fits", "one decision: resource_check, job fits"),
    ("cost_decision_refused", "one decision: resource_check, refused (search + holders)"),
]


def groups(data):
    known = [g for g, _ in GROUPS]
    return [(g, t) for g, t in GROUPS if g in data] + [(g, g) for g in sorted(data) if g not in known]


newest = 0.0  # when the newest benchmark ran (the plot's date)


def load(root):
    """{group: {(n, p): (median_ns, lower_ns, upper_ns)}}"""
    data = {}
    global newest
    for bench in glob.glob(os.path.join(root, "cost_*", "*", "*", "new", "benchmark.json")):
        with open(bench) as f:
            meta = json.load(f)
        newest = max(newest, os.path.getmtime(bench))
        with open(os.path.join(os.path.dirname(bench), "estimates.json")) as f:
            est = json.load(f)["median"]
        p = int(meta["function_id"].split("_")[0])
        n = int(meta["value_str"].split("_")[0])
        ci = est["confidence_interval"]
        data.setdefault(meta["group_id"], {})[(n, p)] = (
            est["point_estimate"],
            ci["lower_bound"],
            ci["upper_bound"],
        )
    return data


def solve3(m, v):
    """Solves the 3x3 system m x = v (Gaussian elimination with partial pivoting)."""
    a = [row[:] + [v[i]] for i, row in enumerate(m)]
    for c in range(3):
        piv = max(range(c, 3), key=lambda r: abs(a[r][c]))
        a[c], a[piv] = a[piv], a[c]
        if abs(a[c][c]) < 1e-12:
            return None
        for r in range(3):
            if r != c:
                k = a[r][c] / a[c][c]
                a[r] = [x - k * y for x, y in zip(a[r], a[c])]
    return [a[i][3] / a[i][i] for i in range(3)]


def fit(points):
    """Least squares t = a + b*N + c*P over {(n, p): t}; returns (a, b, c, r2, worst)."""
    rows = [(1.0, float(n), float(p), t) for (n, p), t in points.items()]
    xtx = [[sum(r[i] * r[j] for r in rows) for j in range(3)] for i in range(3)]
    xty = [sum(r[i] * r[3] for r in rows) for i in range(3)]
    coef = solve3(xtx, xty)
    if coef is None:
        return None
    a, b, c = coef
    mean = sum(r[3] for r in rows) / len(rows)
    ss_tot = sum((r[3] - mean) ** 2 for r in rows)
    ss_res = sum((r[3] - (a + b * r[1] + c * r[2])) ** 2 for r in rows)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    # The point farthest from the fit, relative to its own time.
    worst = max(
        ((n, p, (t - (a + b * n + c * p)) / t) for (n, p), t in points.items()),
        key=lambda w: abs(w[2]),
    )
    return a, b, c, r2, worst


def us(ns):
    v = ns / 1000.0
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
    out = sys.argv[2] if len(sys.argv) > 2 else "benchmarks"
    data = load(root)
    if not data:
        sys.exit(f"no cost_* benchmarks under {root}: run `cargo bench --bench cost_curve` first")
    os.makedirs(out, exist_ok=True)
    gpus = sorted({n for g in data.values() for n, _ in g})
    procs = sorted({p for g in data.values() for _, p in g})

    fits = {}
    print("Cost curve (criterion medians, µs; P = compute processes in total, spread over the GPUs)")
    for group, title in groups(data):
        points = data[group]
        print(f"\n**{title}** (`{group}`)\n")
        print("| P \\ N | " + " | ".join(f"{n} GPU{'s' if n > 1 else ''}" for n in gpus) + " |")
        print("|---|" + "---|" * len(gpus))
        for p in procs:
            cells = [us(points[(n, p)][0]) if (n, p) in points else "" for n in gpus]
            print(f"| {p} processes | " + " | ".join(cells) + " |")
        f = fit({k: v[0] for k, v in points.items()})
        fits[group] = f
        if f is None:
            continue
        a, b, c, r2, (wn, wp, wrel) = f
        off_ns = abs(wrel) * points[(wn, wp)][0]
        largest = max(v[0] for v in points.values())
        linear = r2 >= 0.99 and off_ns <= 0.05 * largest
        growth = "**linear**" if linear else "**not linear**"
        print(
            f"\nGrowth: {growth}. Fit t = {us(a)} µs + {b:,.0f} ns per GPU + {c:,.1f} ns per process,"
            f" R² = {r2:.4f}; farthest point {wn} GPUs x {wp} processes, {us(off_ns)} µs off"
            f" ({off_ns / largest:.1%} of the largest time, {wrel:+.0%} of its own)."
        )

    with open(os.path.join(out, "cost-curve.csv"), "w") as f:
        f.write("group,gpus,processes,median_ns,lower_ns,upper_ns\n")
        for group, _ in groups(data):
            for (n, p), (m, lo, hi) in sorted(data[group].items()):
                f.write(f"{group},{n},{p},{m:.1f},{lo:.1f},{hi:.1f}\n")
    print(f"\nwrote {os.path.join(out, 'cost-curve.csv')}")

    if not shutil.which("gnuplot"):
        print("gnuplot not found (apt-get install gnuplot-nox): no PNG drawn")
        return
    draw(data, fits, gpus, procs, out, newest)


def draw(data, fits, gpus, procs, out, newest):
    png = os.path.join(out, "cost-curve.png")
    script = [
        "set terminal pngcairo size 1400,1000 font 'sans,11'",
        f"set output '{png}'",
        f"set multiplot layout {(len(groups(data)) + 1) // 2},2 title 'vramguard cost curve, "
        + time.strftime("%Y-%m-%d", time.gmtime(newest))
        + ": criterion medians (points) and the fit t = a + b·N + c·P (dashed), P = processes in total'"
        " font 'sans,13'",
        "set termoption noenhanced",
        "set grid",
        "set key top left opaque box width 1.5",
        # Headroom above the highest curve, so the key does not sit on it.
        "set offsets 0, 0, graph 0.2, 0",
        "set xlabel 'compute processes in total (P)'",
        "set ylabel 'time (µs)'",
        f"set xrange [-8:{max(procs) + 8}]",
        "set yrange [0:*]",
        "set xtics (" + ", ".join(f"'{p}' {p}" for p in procs) + ")",
    ]
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    blocks = []
    for group, title in groups(data):
        points = data[group]
        f = fits.get(group)
        sub = f" — R² {f[3]:.3f}" if f else ""
        script.append(f"set title \"{title}{sub}\"")
        plots = []
        for i, n in enumerate(gpus):
            color = colors[i % len(colors)]
            rows = [(p, points[(n, p)]) for p in procs if (n, p) in points]
            block = "\n".join(f"{p} {m / 1000:.4f} {lo / 1000:.4f} {hi / 1000:.4f}" for p, (m, lo, hi) in rows)
            blocks.append(block)
            plots.append(
                f"'-' using 1:2:3:4 with yerrorlines lw 2 pt 7 lc rgb '{color}' title '{n} GPU{'s' if n > 1 else ''}'"
            )
            if f:
                a, b, c = f[0], f[1], f[2]
                plots.append(
                    f"({a:.3f} + {b:.6f}*{n} + {c:.6f}*x)/1000 with lines dt 2 lw 1 lc rgb '{color}' notitle"
                )
        script.append("plot " + ", ".join(plots))
        # Inline data follows the plot command, one block per '-' in order.
        for b in blocks:
            script.append(b)
            script.append("e")
        blocks = []
    script.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True, check=True)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
