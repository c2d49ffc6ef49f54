#!/usr/bin/env python3
"""Turn moe_bench's JSON (--benchmark_out=FILE --benchmark_repetitions=N) into a Markdown table:
median time per call for dense, MoE and run-every-expert, and their ratios to dense, all taken
from the same run.  usage: bench/report.py bench.json"""
import json
import re
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    median = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name") == "median":
            median[b["run_name"]] = b["real_time"]  # unit: ms (the benchmarks set kMillisecond)
    dense = {}
    for name, t in median.items():
        m = re.match(r"dense/d:(\d+)/dh:(\d+)/T:(\d+)", name)
        if m:
            dense[int(m.group(3))] = t
    rows = []
    for name, t in median.items():
        m = re.match(r"moe/d:\d+/dh:\d+/N:(\d+)/k:(\d+)/T:(\d+)", name)
        if not m:
            continue
        n, k, tokens = int(m.group(1)), int(m.group(2)), int(m.group(3))
        every = median.get(name.replace("moe/", "moe_all_experts/", 1))
        rows.append((n, k, tokens, t, every))
    rows.sort()
    ctx = data["context"]
    print(f"Machine: {ctx.get('num_cpus')} CPUs @ {ctx.get('mhz_per_cpu')} MHz, threads={ctx.get('threads')}, "
          f"date {ctx.get('date')}; medians of {data['benchmarks'][0].get('repetitions', '?')} repetitions.\n")
    print("| N | k | T | dense ms | MoE ms | run-every-expert ms | MoE / dense | every-expert / dense | ideal k/N |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, k, tokens, t, every in rows:
        d = dense.get(tokens)
        every_s = f"{every:.2f}" if every else "-"
        ratio_every = f"{every / d:.2f}" if every and d else "-"
        print(f"| {n} | {k} | {tokens} | {d:.2f} | {t:.2f} | {every_s} | **{t / d:.2f}** | {ratio_every} | {k / n:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
