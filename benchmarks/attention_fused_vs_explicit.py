"""Explicit vs fused scaled dot-product attention, and MultiHeadAttention both ways, on one device.

Times transformer_ref.attention.scaled_dot_product_attention (the formula written out) against
fused_attention (F.scaled_dot_product_attention), and MultiHeadAttention with need_weights=True
(explicit) against need_weights=False (fused), at a few sequence lengths, with a causal mask.
Reports the median of repeats after warm-up, and the ratio fused / explicit (< 1: fused is faster).

    python benchmarks/attention_fused_vs_explicit.py [--device cuda] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from transformer_ref.attention import fused_attention, scaled_dot_product_attention
from transformer_ref.masks import causal_mask
from transformer_ref.multihead import MultiHeadAttention


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` runs, synchronising on CUDA."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024], help="sequence lengths T")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name} ({device}), dtype {dtype}, torch {torch.__version__}")
    print(f"B = {args.batch}, d_model = {args.d_model}, H = {args.heads}, causal mask; "
          f"median of {args.repeats} after {args.warmup} warm-up runs")

    mha = MultiHeadAttention(args.d_model, args.heads).to(device=device, dtype=dtype).eval()
    d_k = args.d_model // args.heads
    gen = torch.Generator(device=device).manual_seed(0)
    header = (f"{'T':>6} | {'sdpa explicit':>14} {'fused':>10} {'ratio':>6} | "
              f"{'MHA explicit':>13} {'fused':>10} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    with torch.inference_mode():
        for T in args.lengths:
            q, k, v = (torch.randn(args.batch, args.heads, T, d_k, generator=gen, device=device, dtype=dtype)
                       for _ in range(3))
            x = torch.randn(args.batch, T, args.d_model, generator=gen, device=device, dtype=dtype)
            mask = causal_mask(T, device=device)

            def timed(fn: Callable[[], object]) -> float:
                return median_seconds(fn, device, args.repeats, args.warmup)

            explicit = timed(lambda: scaled_dot_product_attention(q, k, v, mask))
            fused = timed(lambda: fused_attention(q, k, v, mask))
            mha_explicit = timed(lambda: mha(x, x, x, mask, need_weights=True))
            mha_fused = timed(lambda: mha(x, x, x, mask, need_weights=False))
            print(f"{T:>6} | {explicit * 1e3:>11.3f} ms {fused * 1e3:>7.3f} ms {fused / explicit:>6.2f} | "
                  f"{mha_explicit * 1e3:>10.3f} ms {mha_fused * 1e3:>7.3f} ms {mha_fused / mha_explicit:>6.2f}")


if __name__ == "__main__":
    main()
