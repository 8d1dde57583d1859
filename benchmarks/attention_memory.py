"""Attention alone, forward and backward: time and peak memory against the sequence length T.

Rows: transformer_ref's explicit path (scaled_dot_product_attention, the formula written out: it
builds the (T, T) scores and weights), its fast path (fused_attention, what the models run) and
F.scaled_dot_product_attention pinned to each backend available on the device (CPU: math, flash;
CUDA: flash, efficient, cudnn, math). Shapes (B, H, T, d_k) with d_k = 64, no mask.

Time: median of --repeats forward+backward passes after one warm-up, the rows of one T timed
round-robin (CUDA: CUDA events). Peak memory: the most bytes allocated at once during one pass, above
those allocated at its start (q, k, v): on CUDA from torch.cuda.max_memory_allocated, on the CPU from
torch.profiler's memory timeline (see training_speed.profiled_peak_memory).

The plot (--plot, default benchmarks/attention_memory_<device>.png) shows memory against T on log-log
axes: the explicit path's grows like T^2, the fused path's like T.

    OMP_NUM_THREADS=1 python benchmarks/attention_memory.py                     # CPU, T = 512 .. 8192
    python benchmarks/attention_memory.py --device cuda                         # T = 512 .. 16384
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from training_speed import profiled_peak_memory
from transformer_ref.attention import fused_attention, scaled_dot_product_attention

BACKENDS = {"cpu": {"sdpa math": SDPBackend.MATH, "sdpa flash": SDPBackend.FLASH_ATTENTION},
            "cuda": {"sdpa flash": SDPBackend.FLASH_ATTENTION, "sdpa efficient": SDPBackend.EFFICIENT_ATTENTION,
                     "sdpa cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa math": SDPBackend.MATH}}


def row_fns(device_type: str) -> dict[str, Callable[..., torch.Tensor]]:
    rows: dict[str, Callable[..., torch.Tensor]] = {
        "transformer_ref explicit": lambda q, k, v: scaled_dot_product_attention(q, k, v)[0],
        "transformer_ref fast": fused_attention,
    }
    for name, backend in BACKENDS[device_type].items():
        rows[name] = _pinned(backend)
    return rows


def _pinned(backend: SDPBackend) -> Callable[..., torch.Tensor]:
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)
    return run


def make_qkv(B: int, H: int, T: int, d_k: int, device: torch.device, dtype: torch.dtype):
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(B, H, T, d_k, generator=g, device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def fwd_bwd(fn: Callable[..., torch.Tensor], q, k, v) -> None:
    out = fn(q, k, v)
    out.backward(torch.ones_like(out))
    for t in (q, k, v):
        t.grad = None


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def runs(name: str, fn, q, k, v) -> bool:
    """Whether this row runs at all here (a pinned backend may not support the device or dtype)."""
    try:
        fwd_bwd(fn, q, k, v)
        return True
    except RuntimeError as error:
        print(f"  {name}: not available ({str(error).splitlines()[0][:100]})", file=sys.stderr)
        return False


def cpu_peak(fn, q, k, v) -> int | None:
    """Peak bytes allocated during one forward+backward above those allocated at its start (q, k, v)."""
    peak = profiled_peak_memory(lambda: fwd_bwd(fn, q, k, v))
    return None if peak is None else peak[0] - peak[1]


def cuda_peak(fn, q, k, v, device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fwd_bwd(fn, q, k, v)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="T values (default: 512 .. 8192 on the CPU, 512 .. 16384 on CUDA)")
    parser.add_argument("--max-explicit", type=int, default=None,
                        help="largest T for the rows that build the (T, T) matrix (explicit, sdpa math); "
                             "default 4096 on the CPU, 16384 on CUDA")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--plot", default=None, help="PNG path (default benchmarks/attention_memory_<device>.png)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--replot", help="only redraw the plot from a file written by --json")
    args = parser.parse_args()

    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        dtype = torch.bfloat16 if "cuda" in args.device else torch.float32
        plot(saved["results"], args.plot or _default_plot(args.device), saved["device"], dtype)
        return
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    lengths = args.lengths or ([512, 1024, 2048, 4096, 8192, 16384] if cuda else [512, 1024, 2048, 4096, 8192])
    max_explicit = args.max_explicit or (16384 if cuda else 4096)
    fns = row_fns(device.type)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}; {dtype}; B = {args.batch}, H = {args.heads}, "
          f"d_k = {args.d_k}, no mask; forward + backward; median of {args.repeats}")
    results: list[dict] = []
    for T in lengths:
        q, k, v = make_qkv(args.batch, args.heads, T, args.d_k, device, dtype)
        active = {}
        for row, fn in fns.items():
            if T > max_explicit and row in ("transformer_ref explicit", "sdpa math"):
                continue
            if runs(row, fn, q, k, v):
                active[row] = fn
        times: dict[str, list[float]] = {row: [] for row in active}
        for _ in range(args.repeats):
            for row, fn in active.items():
                times[row].append(timed(lambda: fwd_bwd(fn, q, k, v), device))
        for row in active:
            peak = None
            if not args.no_memory:
                peak = cuda_peak(active[row], q, k, v, device) if cuda else cpu_peak(active[row], q, k, v)
            results.append(dict(T=T, row=row, ms=statistics.median(times[row]) * 1e3, peak=peak))
            mem = "-" if peak is None else f"{peak / 2**20:,.0f} MiB"
            print(f"T = {T:>6}  {row:<26} {results[-1]['ms']:>10.1f} ms  {mem:>12}", flush=True)
        del q, k, v
        if cuda:
            torch.cuda.empty_cache()
    weights_mib = {T: args.batch * args.heads * T * T * dtype.itemsize / 2**20 for T in lengths}
    print("\nfor scale, one (B, H, T, T) matrix: " + ", ".join(f"T={T}: {m:,.0f} MiB" for T, m in weights_mib.items()))
    print_table(results, lengths)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, torch=torch.__version__, results=results), f, indent=1)
    if not args.no_memory:
        plot(results, args.plot or _default_plot(device.type), name, dtype)


def _default_plot(device: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"attention_memory_{torch.device(device).type}.png")


def print_table(results: list[dict], lengths: list[int]) -> None:
    rows = list(dict.fromkeys(r["row"] for r in results))
    print("\n| row | " + " | ".join(f"T={T}" for T in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for row in rows:
        cells = []
        for T in lengths:
            hit = [r for r in results if r["row"] == row and r["T"] == T]
            if not hit:
                cells.append("-")
                continue
            mem = "" if hit[0]["peak"] is None else f", {hit[0]['peak'] / 2**20:,.0f} MiB"
            cells.append(f"{hit[0]['ms']:,.1f} ms{mem}")
        print(f"| {row} | " + " | ".join(cells) + " |")


def plot(results: list[dict], path: str, device_name: str, dtype: torch.dtype) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # The transformer_ref rows lie on top of their SDPA twins: draw them wide and pale underneath.
    styles = {"transformer_ref explicit": dict(lw=6, alpha=0.35, zorder=1),
              "transformer_ref fast": dict(lw=6, alpha=0.35, zorder=1)}
    markers = iter("osD^vx")
    for row in dict.fromkeys(r["row"] for r in results):
        points = [(r["T"], r["peak"] / 2**20) for r in results if r["row"] == row and r["peak"]]
        if points:
            ax.plot(*zip(*points), marker=next(markers), label=row, **styles.get(row, dict(lw=1.5, zorder=2)))
    Ts = sorted({r["T"] for r in results})
    ref = [r["peak"] / 2**20 for r in results if r["row"] == "transformer_ref fast" and r["peak"] and r["T"] == Ts[0]]
    if ref:
        ax.plot(Ts, [ref[0] * (T / Ts[0]) ** 2 for T in Ts], "k:", lw=1, label="slope T^2")
        ax.plot(Ts, [ref[0] * (T / Ts[0]) for T in Ts], "k--", lw=1, label="slope T")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("peak memory above q, k, v (MiB)")
    ax.set_title(f"Attention forward + backward, {dtype}: {device_name}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
