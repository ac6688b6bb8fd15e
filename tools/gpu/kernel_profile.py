#!/usr/bin/env python3
"""Summarises an Nsight Compute CSV of gpu__time_duration.sum (one row per kernel launch, in launch order)
of one `medvision generate`: the launches are cut into phases at each embedding kernel (before the first:
the vision encoder; then the prompt's pass; then one segment per decode step), and for each phase the
kernels are grouped by name with their count, total and mean time. Usage: kernel_profile.py NCU.csv"""
import collections
import csv
import sys

UNITS = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6}


def read(path):
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
    rows = []
    for r in csv.DictReader(lines[start:]):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        us = float(r["Metric Value"].replace(",", "")) * UNITS[r["Metric Unit"]]
        name = r["Kernel Name"].split("(")[0]
        rows.append((name[:100], us, r.get("Grid Size", ""), r.get("Block Size", "")))
    return rows


def main():
    rows = read(sys.argv[1])
    phases, cur = [], []
    for row in rows:
        if "embed" in row[0] and (not phases or cur):
            phases.append(cur)
            cur = []
        cur.append(row)
    phases.append(cur)
    names = ["vision encoder (and setup)", "prompt pass"] + [f"decode step {i}" for i in range(1, len(phases))]
    for label, ph in zip(names, phases):
        total = sum(r[1] for r in ph)
        print(f"== {label}: {len(ph)} kernels, {total / 1e3:.3f} ms (sum of kernel durations)")
        g = collections.defaultdict(lambda: [0, 0.0, set()])
        for name, us, grid, block in ph:
            g[name][0] += 1
            g[name][1] += us
            g[name][2].add(f"{grid}x{block}")
        for name, (n, us, shapes) in sorted(g.items(), key=lambda kv: -kv[1][1])[:25]:
            print(f"  {us / 1e3:9.3f} ms {100 * us / max(total, 1e-9):5.1f}%  n={n:5d}  mean {us / n:9.2f} us  "
                  f"{name}  {' '.join(sorted(shapes)[:3])}")
    if len(phases) > 3:  # one decode step launch by launch, to see the per-layer sequence
        print("== last decode step, first 40 launches:")
        for name, us, grid, block in phases[-1][:40]:
            print(f"  {us:9.2f} us  {name}  grid {grid} block {block}")


if __name__ == "__main__":
    main()
