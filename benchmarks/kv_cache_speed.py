"""Greedy decoding with the KV cache against re-running the prefix, against the number of generated tokens T.

Rows: DecoderOnlyLM.greedy_generate and Transformer.greedy_decode (source of T tokens), each with
use_cache=False (every step re-runs the whole prefix: O(t^2 d) attention and O(t d^2) projections per step)
and use_cache=True (each layer keeps its keys and values: one new position per step). The generated tokens
are checked equal. Printed: the median time of --repeats runs of each, and the ratio uncached / cached (> 1:
the cache is faster), which should grow roughly linearly in T once T is past a few dozen tokens.

Time: with --clock cpu (the default on the CPU) this process's CPU time, robust to other jobs on a shared
machine when torch uses one thread (OMP_NUM_THREADS=1); --clock wall for wall time (CUDA: synchronised).

    OMP_NUM_THREADS=1 python benchmarks/kv_cache_speed.py                  # T = 16 .. 256, CPU
    python benchmarks/kv_cache_speed.py --device cuda --lengths 64 256 1024
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from transformer_ref.model import DecoderOnlyLM, Transformer


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, clock: str) -> float:
    """Median time of fn() over `repeats` runs after one warm-up run."""
    now = time.process_time if clock == "cpu" else time.perf_counter

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = now()
        fn()
        sync()
        times.append(now() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="tokens generated T")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None, help="default: cpu on the CPU, else wall")
    args = parser.parse_args()

    device = torch.device(args.device)
    clock = args.clock or ("cpu" if device.type == "cpu" else "wall")
    max_len = max(args.lengths) + 8
    torch.manual_seed(0)
    d, H, L = args.d_model, args.heads, args.layers
    lm = DecoderOnlyLM(100, d, H, L, 4 * d, max_len).to(device).eval()
    seq2seq = Transformer(100, 100, d, H, L, L, 4 * d, dropout=0.0, max_len=max_len).to(device).eval()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, clock {clock}")
    print(f"d_model {d}, {H} heads, {L} layers (the Transformer: {L} + {L}), batch {args.batch}, fp32, "
          f"median of {args.repeats} after one warm-up")
    print(f"{'model':16s} {'T':>5s} {'uncached s':>11s} {'cached s':>9s} {'uncached / cached':>18s}")
    g = torch.Generator().manual_seed(1)
    for T in args.lengths:
        prefix = torch.randint(0, 100, (args.batch, 4), generator=g).to(device)
        src = torch.randint(3, 100, (args.batch, T), generator=g).to(device)
        rows = {
            "DecoderOnlyLM": lambda use_cache: lm.greedy_generate(prefix, T, use_cache=use_cache),
            "Transformer": lambda use_cache: seq2seq.greedy_decode(src, 1, 2, T + 1, use_cache=use_cache),
        }
        for model_name, run in rows.items():
            slow_tokens, fast_tokens = run(False), run(True)
            assert torch.equal(slow_tokens, fast_tokens), f"{model_name}: cached tokens differ at T = {T}"
            steps = slow_tokens.size(1) - (prefix.size(1) if model_name == "DecoderOnlyLM" else 1)
            slow = median_seconds(lambda: run(False), device, args.repeats, clock)
            fast = median_seconds(lambda: run(True), device, args.repeats, clock)
            note = "" if steps == T else f"  (stopped at eos after {steps} steps)"
            print(f"{model_name:16s} {T:5d} {slow:11.3f} {fast:9.3f} {slow / fast:17.2f}x{note}")


if __name__ == "__main__":
    main()
