"""Training-step speed of transformer_ref's BERT and ViT next to their peers, measured side by side.

One training step = forward, loss, backward, AdamW step (fp32 on the CPU; bf16 autocast on CUDA).
Rows (each built with the same shape, loss and optimizer):

  BERT (masked-LM loss on 15% of the tokens, tied output matrix)
    transformer_ref    transformer_ref.bert.BertForMaskedLM (its default, fast path)
    hf                 transformers.BertForMaskedLM, attn_implementation="sdpa" (built from a config)
    torch.nn           nn.TransformerEncoder (post-LN, GELU) with BERT's embeddings and MLM head
  ViT (cross-entropy on the class-token logits)
    transformer_ref    transformer_ref.vit.VisionTransformer
    hf                 transformers.ViTForImageClassification, attn_implementation="sdpa"
    torch.nn           conv patch embedding + nn.TransformerEncoder (pre-LN, GELU) + final LN + head
    timm               timm VisionTransformer of the same shape (only where `import timm` works)

each eager and under torch.compile (the model compiled; the optimizer step stays eager in every row).
The rows of one model are timed round-robin in one process (one step of each row in turn, so that
a noisy neighbour slows every row alike); a row's time is the median of --steps timed steps after
--warmup untimed ones (CUDA: CUDA events). Reported per row: step time, tokens (BERT) or images (ViT)
per second, achieved FLOP/s, peak memory and the step rate relative to the best peer row (not
transformer_ref) of the same model (> 1: transformer_ref is faster).

FLOPs per step, counted the same way for every row of a model (from transformer_ref's parameter
count N): 6 N per token + 12 * layers * T * d_model per token (the attention matmuls QK^T and AV,
forward and backward). On CUDA also the MFU against the datasheet dense bf16 peak (--peak-tflops,
989 for an H100/H200 SXM) and against a bf16 matrix-multiply peak measured in the same run.

Peak memory: the most bytes allocated at once during one step after the warm-up (parameters,
optimizer state, gradients, activations): on CUDA torch.cuda.max_memory_allocated; on the CPU, which
has no such counter, the peak of torch.profiler's memory timeline of one step (profile_memory=True,
the data behind export_memory_timeline; a private torch module, so "-" if it fails).

    OMP_NUM_THREADS=1 python benchmarks/training_speed.py                      # CPU, small shapes
    python benchmarks/training_speed.py --models bert --no-compile            # eager rows only
    python benchmarks/training_speed.py --rows transformer_ref hf --profile   # per-op tables
    python benchmarks/training_speed.py --device cuda                         # BERT-base, ViT-B/16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from transformer_ref.bert import BertConfig, BertForMaskedLM, mask_tokens
from transformer_ref.vit import VisionTransformer

H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA datasheet, H100/H200 SXM, dense bf16 (no sparsity)


# --- shapes -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BertShape:
    num_layers: int
    d_model: int
    num_heads: int
    d_ff: int
    vocab_size: int
    batch: int
    seq_len: int


@dataclasses.dataclass(frozen=True)
class VitShape:
    num_layers: int
    d_model: int
    num_heads: int
    d_ff: int
    image_size: int
    patch_size: int
    batch: int
    num_classes: int


SHAPES = {
    "cpu": (BertShape(4, 256, 4, 1024, 8000, 8, 128), VitShape(4, 256, 4, 1024, 64, 8, 32, 10)),
    "cuda": (BertShape(12, 768, 12, 3072, 30522, 32, 512), VitShape(12, 768, 12, 3072, 224, 16, 128, 1000)),
}


# --- the peers ----------------------------------------------------------------------------------

class TorchBert(nn.Module):
    """BERT for masked LM out of torch.nn parts: embeddings + LN, nn.TransformerEncoder (post-LN, GELU),
    MLM head (dense, GELU, LN, tied decoder + bias)."""

    def __init__(self, s: BertShape, dropout: float, eps: float = 1e-12):
        super().__init__()
        self.word = nn.Embedding(s.vocab_size, s.d_model, padding_idx=0)
        self.position = nn.Embedding(512, s.d_model)
        self.token_type = nn.Embedding(2, s.d_model)
        self.norm = nn.LayerNorm(s.d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(s.d_model, s.num_heads, s.d_ff, dropout, activation="gelu",
                                           layer_norm_eps=eps, batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, s.num_layers, enable_nested_tensor=False)
        self.dense = nn.Linear(s.d_model, s.d_model)
        self.mlm_norm = nn.LayerNorm(s.d_model, eps=eps)
        self.bias = nn.Parameter(torch.zeros(s.vocab_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.word(input_ids) + self.position(positions) + self.token_type(torch.zeros_like(input_ids))
        x = self.encoder(self.dropout(self.norm(x)))
        h = self.mlm_norm(F.gelu(self.dense(x)))
        return F.linear(h, self.word.weight, self.bias)


class TorchViT(nn.Module):
    """ViT out of torch.nn parts: Conv2d patch embedding, class token, position embeddings,
    nn.TransformerEncoder (pre-LN, GELU), final LN, linear head on the class token."""

    def __init__(self, s: VitShape, dropout: float, eps: float = 1e-12):
        super().__init__()
        n = (s.image_size // s.patch_size) ** 2
        self.patch = nn.Conv2d(3, s.d_model, s.patch_size, stride=s.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, s.d_model))
        self.pos = nn.Parameter(torch.randn(1, n + 1, s.d_model) * 0.02)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(s.d_model, s.num_heads, s.d_ff, dropout, activation="gelu",
                                           layer_norm_eps=eps, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, s.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(s.d_model, eps=eps)
        self.head = nn.Linear(s.d_model, s.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)                      # (B, N, d_model)
        x = torch.cat([self.cls.expand(x.size(0), -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.encoder(self.dropout(x)))[:, 0])


def bert_models(s: BertShape, dropout: float) -> dict[str, Callable[[], nn.Module]]:
    def ours() -> nn.Module:
        return BertForMaskedLM(BertConfig(vocab_size=s.vocab_size, d_model=s.d_model, num_layers=s.num_layers,
                                          num_heads=s.num_heads, d_ff=s.d_ff, max_len=512, dropout=dropout))

    def hf() -> nn.Module:
        import transformers
        config = transformers.BertConfig(vocab_size=s.vocab_size, hidden_size=s.d_model,
                                         num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads,
                                         intermediate_size=s.d_ff, max_position_embeddings=512,
                                         hidden_act="gelu", hidden_dropout_prob=dropout,
                                         attention_probs_dropout_prob=dropout, attn_implementation="sdpa")
        return _LogitsOnly(transformers.BertForMaskedLM(config))

    return {"transformer_ref": ours, "hf": hf, "torch.nn": lambda: TorchBert(s, dropout)}


def vit_models(s: VitShape, dropout: float) -> dict[str, Callable[[], nn.Module]]:
    def ours() -> nn.Module:
        return VisionTransformer(s.image_size, s.patch_size, 3, s.num_classes, s.d_model, s.num_layers,
                                 s.num_heads, s.d_ff, dropout=dropout)

    def hf() -> nn.Module:
        import transformers
        config = transformers.ViTConfig(image_size=s.image_size, patch_size=s.patch_size, num_channels=3,
                                        hidden_size=s.d_model, num_hidden_layers=s.num_layers,
                                        num_attention_heads=s.num_heads, intermediate_size=s.d_ff,
                                        hidden_act="gelu", hidden_dropout_prob=dropout,
                                        attention_probs_dropout_prob=dropout, num_labels=s.num_classes,
                                        attn_implementation="sdpa")
        return _LogitsOnly(transformers.ViTForImageClassification(config))

    def timm_vit() -> nn.Module:
        from timm.models.vision_transformer import VisionTransformer as TimmViT
        return TimmViT(img_size=s.image_size, patch_size=s.patch_size, num_classes=s.num_classes,
                       embed_dim=s.d_model, depth=s.num_layers, num_heads=s.num_heads,
                       mlp_ratio=s.d_ff / s.d_model, drop_rate=dropout, attn_drop_rate=dropout,
                       proj_drop_rate=dropout)

    models = {"transformer_ref": ours, "hf": hf, "torch.nn": lambda: TorchViT(s, dropout)}
    if _timm_available():
        models["timm"] = timm_vit
    return models


class _LogitsOnly(nn.Module):
    """A Hugging Face model that returns its logits tensor, like the other rows."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.is_floating_point():
            return self.model(pixel_values=inputs).logits
        return self.model(input_ids=inputs).logits


def _timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


# --- one row: a model, its batch, its optimizer, one step ---------------------------------------

@dataclasses.dataclass
class Row:
    model_name: str          # "bert" or "vit"
    peer: str                # "transformer_ref", "hf", ...
    compiled: bool
    step: Callable[[], None]
    num_params: int
    model: nn.Module
    optimizer: torch.optim.Optimizer

    @property
    def name(self) -> str:
        return f"{self.peer} {'compiled' if self.compiled else 'eager'}"


def make_batch(model_name: str, shape: BertShape | VitShape, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if model_name == "bert":
        ids = torch.randint(5, shape.vocab_size, (shape.batch, shape.seq_len), generator=gen)
        inputs, labels = mask_tokens(ids, mask_token_id=4, vocab_size=shape.vocab_size,
                                     special_token_ids=[0, 1, 2, 3, 4], generator=gen)
        return inputs.to(device), labels.to(device)
    images = torch.randn(shape.batch, 3, shape.image_size, shape.image_size, generator=gen)
    labels = torch.randint(shape.num_classes, (shape.batch,), generator=gen)
    return images.to(device), labels.to(device)


def make_row(model_name: str, peer: str, build: Callable[[], nn.Module], compiled: bool,
             shape: BertShape | VitShape, device: torch.device) -> Row:
    torch.manual_seed(0)
    model = build().to(device).train()
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compiled else model
    inputs, labels = make_batch(model_name, shape, device)
    autocast = device.type == "cuda"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = forward(inputs)
            loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten())
        loss.backward()
        optimizer.step()

    return Row(model_name, peer, compiled, step, num_params, model, optimizer)


def flops_per_step(model_name: str, shape: BertShape | VitShape, num_params: int) -> tuple[float, int]:
    """(6 N + 12 L T d) per token times the tokens of a step; and those tokens (or images)."""
    if model_name == "bert":
        tokens_per_item, items = shape.seq_len, shape.batch * shape.seq_len
    else:
        tokens_per_item, items = (shape.image_size // shape.patch_size) ** 2 + 1, shape.batch
    per_token = 6 * num_params + 12 * shape.num_layers * tokens_per_item * shape.d_model
    return per_token * shape.batch * tokens_per_item, items


# --- timing -------------------------------------------------------------------------------------

def time_round_robin(rows: list[Row], steps: int, warmup: int, device: torch.device,
                     clock: str = "wall") -> dict[str, list[float]]:
    """Warm every row up, then time one step of each row in turn, `steps` times."""
    for row in rows:
        start = time.perf_counter()
        for _ in range(warmup):
            row.step()
        _sync(device)
        print(f"  warmed up {row.model_name} {row.name} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    times: dict[str, list[float]] = {row.name: [] for row in rows}
    for _ in range(steps):
        for row in rows:
            times[row.name].append(_time_step(row.step, device, clock))
    return times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_step(step: Callable[[], None], device: torch.device, clock: str = "wall") -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    now = time.process_time if clock == "cpu" else time.perf_counter
    start_s = now()
    step()
    return now() - start_s


def cuda_peak_memory(row: Row, device: torch.device) -> int:
    """This row's peak: what it keeps between steps (parameters, gradients, optimizer state) plus the
    most that one step allocates on top (every row's model lives on the GPU at once, so
    max_memory_allocated alone would count the other rows too)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    row.step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before + _resident_bytes(row)


def _resident_bytes(row: Row) -> int:
    tensors = {id(p): p for p in row.model.parameters()}
    tensors.update({id(p.grad): p.grad for p in row.model.parameters() if p.grad is not None})
    for state in row.optimizer.state.values():
        tensors.update({id(t): t for t in state.values() if isinstance(t, torch.Tensor)})
    return sum(t.numel() * t.element_size() for t in tensors.values() if t.device.type == "cuda")


def profiled_peak_memory(fn: Callable[[], None]) -> tuple[int, int] | None:
    """(peak, start): the most bytes allocated on the CPU at once while fn() runs, and at its start,
    from torch.profiler's memory timeline (the data export_memory_timeline draws). It reads a private
    torch module, so any failure gives None (shown as "-") instead of stopping the benchmark."""
    from torch.profiler import ProfilerActivity, profile
    try:
        from torch.profiler._memory_profiler import MemoryProfileTimeline
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            fn()
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
        totals = [sum(categories) for categories in sizes]
        return max(totals), totals[0]
    except Exception as error:  # noqa: BLE001
        print(f"  peak memory unavailable: {error!r}", file=sys.stderr)
        return None


def measured_matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """bf16 n x n @ n x n throughput on this GPU (the best of `repeats`), in TFLOP/s."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = min(_time_step(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e12


def profile_row(row: Row, steps: int = 5, top: int = 25) -> None:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    for _ in range(3):
        row.step()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            row.step()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(f"\n== {row.model_name} {row.name}: {steps} steps, sorted by {sort}")
    print(prof.key_averages().table(sort_by=sort, row_limit=top, max_name_column_width=48))


# --- main ---------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--models", nargs="+", default=["bert", "vit"], choices=["bert", "vit"])
    parser.add_argument("--rows", nargs="+", default=None,
                        help="peers to run (transformer_ref, hf, torch.nn, timm); default: all available")
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--compile-only", action="store_true", help="torch.compile rows only")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per row first")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="CPU rows: wall-clock time (default) or this process's CPU time, which a busy "
                             "machine disturbs less (use it with OMP_NUM_THREADS=1)")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout everywhere (default 0)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--profile", action="store_true", help="print a per-op profile of each row, no timing")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                        help="datasheet dense bf16 peak for the MFU column (default 989, H100/H200 SXM)")
    parser.add_argument("--chapters", action="store_true",
                        help="instead: CPU time of the book's shared training runs (transformer_ref.experiments)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    if args.chapters:
        chapter_times()
        return
    device = torch.device(args.device)
    bert_shape, vit_shape = SHAPES[device.type]
    compiled_modes = [False, True]
    if args.no_compile:
        compiled_modes = [False]
    elif args.compile_only:
        compiled_modes = [True]
    dtype_note = "bf16 autocast" if device.type == "cuda" else "fp32"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(f"device: {device_name}; torch {torch.__version__}; {dtype_note}; "
          f"threads {torch.get_num_threads()}; dropout {args.dropout}; clock {args.clock if device.type == 'cpu' else 'CUDA events'}")
    if device.type == "cuda":
        print(f"driver: {_nvidia_driver()}")
    if not _timm_available():
        print("timm: not installed, no timm rows")
    matmul_tflops = measured_matmul_tflops(device) if device.type == "cuda" and not args.profile else None
    if matmul_tflops:
        print(f"measured bf16 matmul peak: {matmul_tflops:.0f} TFLOP/s (8192^3); datasheet {args.peak_tflops:.0f}")

    results = []
    for model_name in args.models:
        shape = bert_shape if model_name == "bert" else vit_shape
        builders = bert_models(shape, args.dropout) if model_name == "bert" else vit_models(shape, args.dropout)
        peers = [p for p in builders if args.rows is None or p in args.rows]
        rows = [make_row(model_name, peer, builders[peer], compiled, shape, device)
                for compiled in compiled_modes for peer in peers]
        print(f"\n{model_name}: {shape}")
        if args.profile:
            for row in rows:
                profile_row(row)
            continue
        times = time_round_robin(rows, args.steps, args.warmup, device, args.clock)
        ref_params = rows[0].num_params if rows[0].peer == "transformer_ref" else None
        flops, items = flops_per_step(model_name, shape, ref_params or rows[0].num_params)
        unit = "tokens/s" if model_name == "bert" else "images/s"
        memory = {}
        if not args.no_memory:
            for row in rows:
                if device.type == "cuda":
                    memory[row.name] = cuda_peak_memory(row, device)
                else:
                    peak = profiled_peak_memory(row.step)
                    memory[row.name] = peak[0] if peak else None
        for compiled in compiled_modes:
            group = [r for r in rows if r.compiled == compiled]
            medians = {r.name: statistics.median(times[r.name]) for r in group}
            peer_best = min((medians[r.name] for r in group if r.peer != "transformer_ref"), default=None)
            for r in group:
                t = medians[r.name]
                entry = dict(model=model_name, row=r.name, params=r.num_params, step_ms=t * 1e3,
                             iqr_ms=_iqr(times[r.name]) * 1e3, rate=items / t, unit=unit,
                             tflops=flops / t / 1e12, peak_memory=memory.get(r.name),
                             vs_best_peer=(peer_best / t) if peer_best else None)
                if device.type == "cuda":
                    entry["mfu_datasheet"] = flops / t / 1e12 / args.peak_tflops
                    entry["mfu_measured"] = flops / t / 1e12 / matmul_tflops
                results.append(entry)
        print(f"FLOPs per step {flops:.3e} (6N + 12 L T d per token, N = {ref_params or rows[0].num_params:,})")
        print_table([e for e in results if e["model"] == model_name], device.type == "cuda")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device_name, torch=torch.__version__, results=results), f, indent=1)


def chapter_times() -> None:
    """CPU time of the training runs that chapters 6 (Add & Norm) and 10 (warm-up) make through
    transformer_ref.experiments.train_reverse_transformer, with the arguments the chapters use."""
    from transformer_ref.experiments import train_reverse_transformer
    runs = [("06 post-LN, no warm-up", dict(norm_first=False, lr=1e-2, warmup_steps=1, steps=150)),
            ("06 pre-LN, no warm-up", dict(norm_first=True, lr=1e-2, warmup_steps=1, steps=150)),
            ("10 post-LN, no warm-up", dict(norm_first=False, lr=1e-2, warmup_steps=1, steps=200)),
            ("10 post-LN, 50 warm-up steps", dict(norm_first=False, lr=1e-2, warmup_steps=50, steps=200))]
    print(f"{_cpu_name()}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print("| run | CPU s | wall s | exact match |\n|---|---|---|---|")
    for name, kwargs in runs:
        cpu, wall = time.process_time(), time.perf_counter()
        _, accuracy = train_reverse_transformer(**kwargs)
        print(f"| {name} ({kwargs['steps']} steps) | {time.process_time() - cpu:.1f} | "
              f"{time.perf_counter() - wall:.1f} | {accuracy:.1%} |", flush=True)


def print_table(entries: list[dict], cuda: bool) -> None:
    header = (f"| {'row':<26} | {'params':>10} | {'step ms (IQR)':>15} | {'rate':>17} | {'TFLOP/s':>8} | "
              + ("MFU sheet | MFU meas. | " if cuda else "") + f"{'peak mem':>9} | {'vs best peer':>12} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for e in entries:
        mem = "-" if e["peak_memory"] is None else f"{e['peak_memory'] / 2**20:.0f} MiB"
        ratio = "-" if e["vs_best_peer"] is None else f"{e['vs_best_peer']:.3f}x"
        step = f"{e['step_ms']:.1f} ({e['iqr_ms']:.1f})"
        rate = f"{e['rate']:,.0f} {e['unit']}"
        mfu = f"{e['mfu_datasheet']:>9.1%} | {e['mfu_measured']:>9.1%} | " if cuda else ""
        print(f"| {e['row']:<26} | {e['params']:>10,} | {step:>15} | {rate:>17} | {e['tflops']:>8.3f} | "
              f"{mfu}{mem:>9} | {ratio:>12} |")


def _iqr(values: list[float]) -> float:
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return "CPU"


def _nvidia_driver() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    main()
