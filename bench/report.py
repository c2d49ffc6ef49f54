#!/usr/bin/env python3
"""Turn moe_bench's JSON (--benchmark_out=FILE --benchmark_repetitions=N) into the Markdown
tables of bench/RESULTS.md: median ms per call, MoE/dense, weight read rate as a fraction of
StreamRead (the memory floor's measure), FLOP rate as a fraction of the dense FFN's at the same T
(the compute floor's measure), all from the same run; then the cold decode cases (weights evicted
before each call) beside the same cases warm.  usage: bench/report.py bench.json"""
import json
import re
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    med = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name") == "median":
            name = b["run_name"].removesuffix("/real_time")
            med[name] = b  # times in ms (the benchmarks set kMillisecond)
    stream = med.get("StreamRead", {}).get("bytes_per_second")
    dense = {}
    for name, b in med.items():
        m = re.fullmatch(r"dense/d:(\d+)/dh:(\d+)/T:(\d+)(/w:\w+)?", name)
        if m:
            dense[(m.group(4) or "", int(m.group(1)), int(m.group(2)), int(m.group(3)))] = b
    rows = []
    for name, b in med.items():
        m = re.fullmatch(r"moe/d:(\d+)/(dh|m):(\d+)/N:(\d+)/k:(\d+)/T:(\d+)(/w:\w+)?", name)
        if m:
            d, kind, width, n, k, t = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)), int(m.group(5)), int(m.group(6))
            rows.append((m.group(7) or "", kind == "m", d, width, n, k, t, name, b))
    rows.sort()

    ctx = data["context"]
    # Google Benchmark's cache list comes from /sys, absent on some VMs; moe_bench adds sysconf's.
    l1d = next((c["size"] // 1024 for c in ctx.get("caches", []) if c.get("type") == "Data" and c.get("level") == 1),
               ctx.get("l1d_kib", "?"))
    reps = data["benchmarks"][-1].get("repetitions", "?")
    print(f"Machine: {ctx.get('cpu', 'CPU not recorded')}; {ctx.get('num_cpus')} CPUs @ {ctx.get('mhz_per_cpu')} MHz, "
          f"L1d {l1d} KiB, threads={ctx.get('threads')}, "
          f"date {ctx.get('date')}; medians of {reps} repetitions; StreamRead "
          f"{stream / 1e9:.1f} GB/s.\n" if stream else "")
    print("| shape | T | dense ms | MoE ms | MoE / dense | MoE weights GB/s (of StreamRead) "
          "| MoE GFLOP/s (of dense's) | every-expert ms |")
    print("|---|---|---|---|---|---|---|---|")

    def frac(x, ref):
        return f" ({x / ref:.2f})" if ref else ""

    for wt, mixtral, d, width, n, k, t, name, b in rows:
        shape = f"{'Mixtral m' if mixtral else 'LLaMA d_h'}={width} N={n} k={k} {wt[3:] or 'f32'}"
        db = None if mixtral else dense.get((wt, d, width, t))
        every = med.get(name.replace("moe/", "moe_all_experts/", 1))
        gbs = b["bytes_per_second"] / 1e9
        gflops = b["FLOP/s"] / 1e9
        print(f"| {shape} | {t} | {db['real_time']:.2f} | " if db else f"| {shape} | {t} | - | ", end="")
        print(f"{b['real_time']:.2f} | " + (f"**{b['real_time'] / db['real_time']:.2f}** | " if db else "- | ")
              + f"{gbs:.1f}{frac(b['bytes_per_second'], stream)} | "
              + f"{gflops:.0f}{frac(b['FLOP/s'], db['FLOP/s'] if db else None)} | "
              + (f"{every['real_time']:.1f} |" if every else "- |"))
    cold = []
    for name, b in med.items():
        m = re.fullmatch(r"moe/d:(\d+)/dh:(\d+)/N:(\d+)/k:(\d+)/T:(\d+)(/w:\w+)?/cold", name)
        if m:
            cold.append((m.group(6) or "", int(m.group(5)), int(m.group(3)), int(m.group(4)), name, b))
    if cold:
        print("\nWeights evicted from the caches before each call (`.../cold`), N = 8 k = 2 against dense; "
              "\"of read\" is the fraction of the evicting read's rate, measured in the same iterations:\n")
        print("| weights | T | dense ms | MoE ms | MoE / dense | MoE weights GB/s (of read) "
              "| dense weights GB/s (of read) | MoE cold / warm |")
        print("|---|---|---|---|---|---|---|---|")
        for wt, t, n, k, name, b in sorted(cold):
            db = med.get(name.replace("moe/", "dense/", 1).replace(f"/N:{n}/k:{k}", ""))
            warm = med.get(name.removesuffix("/cold"))
            print(f"| {wt[3:] or 'f32'} | {t} | " + (f"{db['real_time']:.2f} | " if db else "- | ")
                  + f"{b['real_time']:.2f} | "
                  + (f"**{b['real_time'] / db['real_time']:.2f}** | " if db else "- | ")
                  + f"{b['bytes_per_second'] / 1e9:.1f}{frac(b['bytes_per_second'], b.get('stream_bytes_per_second'))} | "
                  + (f"{db['bytes_per_second'] / 1e9:.1f}"
                     f"{frac(db['bytes_per_second'], db.get('stream_bytes_per_second'))} | " if db else "- | ")
                  + (f"{b['real_time'] / warm['real_time']:.2f} |" if warm else "- |"))
    dense_rows = sorted(dense.items())
    if dense_rows:
        print("\nDense FFN alone: " + "; ".join(
            f"{wt[3:] or 'f32'} T={t}: {b['real_time']:.2f} ms, {b['bytes_per_second'] / 1e9:.1f} GB/s"
            + (f" ({b['bytes_per_second'] / stream:.2f} of StreamRead)" if stream and t == 1 else "")
            + f", {b['FLOP/s'] / 1e9:.0f} GFLOP/s" for (wt, d, dh, t), b in dense_rows))


if __name__ == "__main__":
    main(sys.argv[1])
