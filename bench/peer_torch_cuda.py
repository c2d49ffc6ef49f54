#!/usr/bin/env python3
"""PyTorch on the GPU beside moe_bench_cuda: the same MoE layer through torch._grouped_mm.

The pipeline of a Hugging Face-style grouped MoE block, bf16: router logits, softmax over N in
float32, top-k (LLaMA-MoE: weights not renormalised, output x N/k), a stable sort of the
(token, slot) pairs by expert, the gather, one grouped GEMM for gate and up together (weights
[N, 2m, d] as Hugging Face stores them, transposed views), SiLU(gate) * up, a grouped GEMM for
down, the un-permute and the weighted sum over the k slots. Each forward is captured in a CUDA
graph and replayed, rotating over 8 inputs as moe_bench_cuda does; CUDA events, median of batches.

    python3 bench/peer_torch_cuda.py [--tokens 1,16,64,256,2048,8192] [--moe-json moe_cuda.json]

--check runs a small shape against a per-token loop in float64 (on the CPU too, with a loop in
place of torch._grouped_mm there), so the pipeline's indexing can be checked without a GPU.
"""
import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F


def grouped_mm(a, b_t, offs):
    """a: (rows, K); b_t: (G, K, N) with K contiguous; offs: (G,) int32 group ends."""
    if a.is_cuda and hasattr(torch, "_grouped_mm"):
        return torch._grouped_mm(a, b_t, offs=offs)
    out = a.new_empty(a.shape[0], b_t.shape[2])
    start = 0
    for g, end in enumerate(offs.tolist()):
        out[start:end] = a[start:end] @ b_t[g]
        start = end
    return out


class GroupedMoE:
    def __init__(self, d, m, n, k, dtype, device, seed=0):
        gen = torch.Generator(device="cpu").manual_seed(seed)

        def rand(*shape, sd):
            return (torch.randn(*shape, generator=gen) * sd).to(device=device, dtype=dtype)

        self.d, self.m, self.n, self.k = d, m, n, k
        self.router = rand(n, d, sd=1.0 / math.sqrt(d))  # [N, d] as nn.Linear stores it
        self.w13 = torch.cat([rand(n, m, d, sd=0.02), rand(n, m, d, sd=0.02)], dim=1)  # [N, 2m, d]
        self.w2 = rand(n, d, m, sd=0.02)  # [N, d, m]
        self.scale = n / k

    def forward(self, x):
        t = x.shape[0]
        logits = F.linear(x, self.router)
        probs = torch.softmax(logits.float(), dim=-1)
        top_w, top_i = probs.topk(self.k, dim=-1)
        flat = top_i.flatten()
        order = torch.sort(flat, stable=True).indices
        token_of = order // self.k
        counts = torch.zeros(self.n, dtype=torch.int32, device=x.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        gu = grouped_mm(x[token_of], self.w13.transpose(1, 2), offs)
        h = F.silu(gu[:, : self.m]) * gu[:, self.m :]
        y_sorted = grouped_mm(h, self.w2.transpose(1, 2), offs)
        y_pairs = torch.empty_like(y_sorted)
        y_pairs[order] = y_sorted
        y = (y_pairs.view(t, self.k, self.d).float() * top_w.unsqueeze(-1)).sum(dim=1)
        return (y * self.scale).to(x.dtype)

    def reference(self, x):
        """Per token, in float64: formula (2) with the N/k rescale."""
        xd, r = x.double(), self.router.double()
        w13, w2 = self.w13.double(), self.w2.double()
        y = torch.zeros(x.shape[0], self.d, dtype=torch.float64)
        p = torch.softmax(xd @ r.T, dim=-1)
        for t in range(x.shape[0]):
            w, idx = p[t].topk(self.k)
            for s in range(self.k):
                e = int(idx[s])
                gu = w13[e] @ xd[t]
                y[t] += w[s] * (w2[e] @ (F.silu(gu[: self.m]) * gu[self.m :]))
        return y * self.scale


def check():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    moe = GroupedMoE(64, 32, 8, 2, dtype, device, seed=1)
    x = torch.randn(37, 64, generator=torch.Generator().manual_seed(2)).to(device=device, dtype=dtype)
    got = moe.forward(x).double().cpu()
    want = moe.reference(x.cpu())
    err = ((got - want).abs().max() / want.abs().max()).item()
    bound = 2e-2 if dtype == torch.bfloat16 else 1e-5
    print(f"check on {device} ({dtype}): max error / max |y| = {err:.2e} (bound {bound:g})")
    return err <= bound


def bench(moe, tokens, batches, inputs=8):
    dev = "cuda"
    xs = [torch.randn(tokens, moe.d, device=dev, dtype=torch.bfloat16) for _ in range(inputs)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x in xs:
            for _ in range(3):
                moe.forward(x)
    torch.cuda.current_stream().wait_stream(side)
    graphs, pool = [], None
    for x in xs:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            moe.forward(x)
        pool = g.pool()
        graphs.append(g)
    for i in range(3 * inputs):
        graphs[i % inputs].replay()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(inputs):
        graphs[i].replay()
    stop.record()
    stop.synchronize()
    per = max(inputs, int(2.0 / max(1e-3, start.elapsed_time(stop) / inputs)) // inputs * inputs)
    times = []
    for _ in range(batches):
        start.record()
        for i in range(per):
            graphs[i % inputs].replay()
        stop.record()
        stop.synchronize()
        times.append(1e3 * start.elapsed_time(stop) / per)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1,16,64,256,2048,8192")
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--moe-json", help="moe_bench_cuda --json output, for the side-by-side table")
    ap.add_argument("--check", action="store_true", help="check the pipeline against a per-token loop, then exit")
    args = ap.parse_args()
    if args.check:
        sys.exit(0 if check() else 1)
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device")
        sys.exit(77)
    if not check():
        sys.exit(1)
    ours = {}
    if args.moe_json:
        with open(args.moe_json) as f:
            for r in json.load(f)["results"]:
                ours[(r["name"], r["T"])] = r["us"]
    print(f"PyTorch {torch.__version__}, {torch.cuda.get_device_name(0)}, bf16, CUDA graphs, "
          f"medians of {args.batches} batches")
    print("| shape | T | PyTorch us | moe us | PyTorch / moe |")
    print("|---|---|---|---|---|")
    shapes = [("moe/d:4096/m:1376/N:8/k:2/w:bf16", GroupedMoE(4096, 1376, 8, 2, torch.bfloat16, "cuda")),
              ("dense/d:4096/dh:11008/w:bf16", GroupedMoE(4096, 11008, 1, 1, torch.bfloat16, "cuda"))]
    for name, moe in shapes:
        for t in [int(v) for v in args.tokens.split(",")]:
            us = bench(moe, t, args.batches)
            mine = ours.get((name, t))
            ratio = f"{us / mine:.2f}" if mine else "-"
            mine_s = f"{mine:.1f}" if mine else "-"
            print(f"| {name} | {t} | {us:.1f} | {mine_s} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
