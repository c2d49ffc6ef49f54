#!/usr/bin/python3
"""The same FFN work in PyTorch on the CPU, beside moe_bench's numbers.

Runs, at moe_bench's shapes and token counts, with the same thread count:
  dense  the SwiGLU FFN, F.linear three times (Hugging Face LlamaMLP)
  moe    a Hugging Face-style MoE block (MixtralSparseMoeBlock's loop): router logits, softmax,
         top-k, then per expert: gather its tokens, its FFN, weight, index_add_ into the output
and prints a Markdown table of medians next to moe_bench's medians (from its JSON) and the ratio.

Needs Debian's python3-torch; PyTorch's float32 matmul goes through the system BLAS, so install
OpenBLAS too (libopenblas0-pthread), else Debian's reference BLAS makes PyTorch ~10x slower.
PyTorch's defaults are slow on this machine class; this script sets OMP_WAIT_POLICY=PASSIVE and,
where the CPU has AVX-512, OPENBLAS_CORETYPE=SkylakeX (OpenBLAS otherwise picks Haswell kernels on
Zen 4/5), the tuning bench/RESULTS.md's PyTorch figures were measured with. Without AVX-512 (e.g. Zen 3)
OpenBLAS's own choice stands: its SkylakeX kernels would die there on an illegal instruction.
--openblas-coretype names the kernels instead ("" leaves the environment's).

With --cold, only moe_bench's cold cases run (dense and N = 8 at T = 1 and 8): before each timed
call the script reads 512 MB, untimed, as moe_bench's .../cold benchmarks do, so the weights come
from memory and not from the caches, as in a model where other layers run between two calls.

usage: bench/peer_pytorch.py [--threads 2] [--repetitions 5] [--dtype float32|bfloat16]
                             [--moe-bench-json bench.json] [--filter REGEX] [--cold]
                             [--openblas-coretype auto|""|NAME]
"""
import argparse
import json
import math
import os
import re
import statistics
import sys
import time



TOKENS = (1, 8, 64, 512)
COLD_TOKENS = (1, 8)
COLD_CASES = ("dense/d:4096/dh:11008", "moe/d:4096/dh:11008/N:8/k:2")
# (name as moe_bench writes it, d, width of one expert's hidden layer or dense d_h, N, k)
CASES = [("dense/d:4096/dh:11008", 4096, 11008, 0, 0),
         ("moe/d:4096/dh:11008/N:8/k:2", 4096, 11008 // 8, 8, 2),
         ("moe/d:4096/dh:11008/N:16/k:4", 4096, 11008 // 16, 16, 4),
         ("moe/d:4096/m:14336/N:8/k:2", 4096, 14336, 8, 2)]


def ffn(torch, x, gate, up, down):
    F = torch.nn.functional
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def moe_block(torch, x, router, experts, k, scale):
    """Hugging Face's MixtralSparseMoeBlock loop (softmax over N, top-k, no renormalisation, as
    moe's MoEConfig{k}), times moe's default N/k scale, formula (6)."""
    logits = torch.nn.functional.linear(x, router)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(x.dtype)
    weights, selected = torch.topk(probs, k, dim=-1)
    out = torch.zeros_like(x)
    mask = torch.nn.functional.one_hot(selected, num_classes=len(experts)).permute(2, 1, 0)
    for e, (gate, up, down) in enumerate(experts):
        slot, tokens = torch.where(mask[e])
        if tokens.numel() == 0:
            continue
        y = ffn(torch, x[tokens], gate, up, down) * weights[tokens, slot, None]
        out.index_add_(0, tokens, y)
    return out * scale


def time_call(fn, repetitions, min_seconds=0.2, before=None):
    """Median over `repetitions` of the mean time of one call (ms), each repetition at least
    min_seconds of calls, after one warm-up call. before(), if given, runs untimed before each call."""
    fn()
    times = []
    for _ in range(repetitions):
        n, elapsed = 0, 0.0
        while elapsed < min_seconds:
            if before:
                before()
            start = time.perf_counter()
            fn()
            elapsed += time.perf_counter() - start
            n += 1
        times.append(elapsed / n * 1e3)
    return statistics.median(times)


def moe_bench_json(path):
    """moe_bench's medians by name, and the CPU its context names ("" if none)."""
    with open(path) as f:
        data = json.load(f)
    medians = {b["run_name"].removesuffix("/real_time"): b["real_time"]
               for b in data["benchmarks"] if b.get("aggregate_name") == "median"}
    return medians, data.get("context", {}).get("cpu", "")


def cpu_flags():
    """The first processor's flags in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def this_cpu():
    """ "model name, vendor family F model M" from /proc/cpuinfo, as moe_bench's context writes it
    (without its microarchitecture name); "" where there is no /proc/cpuinfo."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return ""
    return (f"{fields.get('model name', '?')}, {fields.get('vendor_id', '?')} family "
            f"{fields.get('cpu family', '?')} model {fields.get('model', '?')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--moe-bench-json", help="moe_bench --benchmark_out file to set beside")
    ap.add_argument("--filter", default="", help="regex on the benchmark name")
    ap.add_argument("--cold", action="store_true", help="evict the weights before each call (moe_bench's /cold cases)")
    ap.add_argument("--openblas-coretype", default="auto",
                    help='OpenBLAS kernels: auto (SkylakeX where the CPU has AVX-512, else OpenBLAS\'s own '
                         'choice), "" (keep the environment\'s) or a name')
    args = ap.parse_args()
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    avx512 = "avx512f" in cpu_flags()
    coretype = args.openblas_coretype
    if coretype == "auto":
        coretype = "SkylakeX" if avx512 else ""
    if coretype.lower() in ("skylakex", "cooperlake", "sapphirerapids") and not avx512:
        ap.error(f"--openblas-coretype {coretype}: OpenBLAS's AVX-512 kernels, and this CPU has no AVX-512 "
                 "(PyTorch would die on an illegal instruction); use auto")
    if coretype:
        os.environ["OPENBLAS_CORETYPE"] = coretype

    import torch  # after the environment is set
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    ours, ours_cpu = moe_bench_json(args.moe_bench_json) if args.moe_bench_json else ({}, "")
    cpu = this_cpu()
    suffix = ("" if args.dtype == "float32" else "/w:bf16") + ("/cold" if args.cold else "")
    tokens = COLD_TOKENS if args.cold else TOKENS
    evict = None
    if args.cold:
        big = torch.ones(1 << 27)  # 512 MB of float32

        def evict():
            big.sum()

    cold = ", weights evicted before each call" if args.cold else ""
    print(f"PyTorch {torch.__version__}, {args.threads} threads, {args.dtype}, medians of "
          f"{args.repetitions} repetitions{cold}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(OpenBLAS chooses)')}; CPU: {cpu or 'unknown'}\n")
    if ours and not (cpu and cpu.split(", ")[-1] in ours_cpu):  # vendor, family and model must match
        # The same VM name has run on hosts of different CPU generations (moe_bench.cpp).
        print(f"**Warning: the moe_bench JSON names {'another CPU: ' + ours_cpu if ours_cpu else 'no CPU'}; "
              f"its figures may not be comparable.**\n")
    print("| benchmark | PyTorch ms | moe ms | PyTorch / moe |")
    print("|---|---|---|---|")
    for name, d, m, n, k in CASES:
        if args.cold and name not in COLD_CASES:
            continue
        if not any(re.search(args.filter, f"{name}/T:{t}") for t in tokens):
            continue

        def rand(*shape):  # uniform, sd 0.02 (as moe_bench)
            return ((torch.rand(*shape) * 2 - 1) * (0.02 * math.sqrt(3))).to(dtype)

        with torch.no_grad():
            if n == 0:
                weights = (rand(m, d), rand(m, d), rand(d, m))
            else:
                experts = [(rand(m, d), rand(m, d), rand(d, m)) for _ in range(n)]
                router = (torch.randn(n, d) / math.sqrt(d)).to(dtype)
            for t in tokens:
                full = f"{name}/T:{t}"
                if not re.search(args.filter, full):
                    continue
                x = ((torch.rand(t, d) * 2 - 1) * math.sqrt(3)).to(dtype)
                if n == 0:
                    ms = time_call(lambda: ffn(torch, x, *weights), args.repetitions, before=evict)
                else:
                    ms = time_call(lambda: moe_block(torch, x, router, experts, k, n / k), args.repetitions,
                                   before=evict)
                mine = ours.get(full + suffix)
                mine_s = f"{mine:.2f}" if mine else "-"
                ratio = f"{ms / mine:.2f}" if mine else "-"
                print(f"| {full} | {ms:.2f} | {mine_s} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
