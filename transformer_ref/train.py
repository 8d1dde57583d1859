"""One training loop for every model in the course.

- ``get_device()``: CUDA, then Apple MPS, then CPU.  ``seed_everything(seed)``: Python, NumPy, torch.
- ``fit(model, batches, loss_fn, optimizer, steps=... | epochs=..., scheduler=..., max_norm=...)``
  runs the loop and returns a ``History`` (loss, learning rate and gradient norm per step).
  On CUDA the forward pass runs under bf16 autocast; elsewhere in float32. ``grad_accum=k``
  accumulates the gradients of k batches per step; ``checkpoint_path=`` / ``resume_from=`` write
  checkpoints during the run and continue one exactly (RNG states and data position included).
  Under torchrun it trains a ``DistributedDataParallel`` model (see ``transformer_ref.distributed``).
- A loss function takes ``(model, batch)`` and returns a scalar tensor, so one loop serves every
  model: ``seq2seq_loss`` (teacher forcing), ``language_model_loss`` (next token) and
  ``classification_loss`` are ready-made; write your own for anything else (e.g. masked LM).
- ``exact_match_accuracy`` (greedy decoding), ``classification_accuracy``, ``evaluate_loss``.
- ``save_checkpoint`` / ``load_checkpoint``: model + optimizer (+ scheduler) + step.
- ``python -m transformer_ref.train --task reverse|lm|shapes ...`` (``main``): the command line,
  in one process or data parallel under ``torchrun`` (``--help``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import random
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from transformer_ref import distributed
from transformer_ref._checks import check_ndim, check_positive_int
from transformer_ref.data import BOS_ID, EOS_ID, PAD_ID, split_target

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""loss_fn(model, batch) -> scalar loss tensor; ``batch`` is already on the model's device."""


def get_device() -> torch.device:
    """The best available device: "cuda" if a GPU is visible, else "mps" (Apple), else "cpu"."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every GPU) with ``seed``.

    Together with seeded data generators this makes a CPU run repeat exactly; GPU kernels may
    still be non-deterministic unless ``torch.use_deterministic_algorithms(True)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class History:
    """Per optimisation step: ``loss`` (before the update), ``lr`` (of the first parameter group,
    used by that step) and ``grad_norm`` (global L2 norm of the gradients, before clipping)."""
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.loss)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) tuple / list / dict batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    return next(model.parameters(), torch.empty(0)).device


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (when ``enabled``); a no-op context (float32) on every other device."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _total_steps(batches: Iterable, steps: int | None, epochs: int | None, grad_accum: int) -> int:
    """The number of optimisation steps: ``steps``, or ``epochs`` passes of ``grad_accum`` batches a step."""
    if (steps is None) == (epochs is None):
        raise ValueError(f"give exactly one of steps and epochs; got steps={steps!r}, epochs={epochs!r}")
    if steps is not None:
        return check_positive_int(steps, "steps")
    check_positive_int(epochs, "epochs")
    try:
        micro_batches = epochs * len(batches)   # type: ignore[arg-type]
    except TypeError:
        raise TypeError("batches must have a len() when training by epochs; "
                        f"got {type(batches).__name__} (pass steps=... instead)") from None
    if micro_batches % grad_accum:
        raise ValueError(f"epochs * len(batches) = {micro_batches} batches must be divisible by grad_accum "
                         f"({grad_accum}) when training by epochs; pass steps=... instead")
    return micro_batches // grad_accum


def _cycle(batches: Iterable) -> Iterator:
    """The batches of ``batches``, pass after pass, forever (a pass starts only when a batch is asked for)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("batches yielded no batch on a pass; pass a re-iterable such as "
                             "data.BatchIterator, not a one-shot generator")


def fit(model: nn.Module, batches: Iterable, loss_fn: LossFn, optimizer: torch.optim.Optimizer, *,
        steps: int | None = None, epochs: int | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        max_norm: float | None = None, device: torch.device | str | None = None,
        amp: bool = True, progress: bool = True, desc: str = "train", grad_accum: int = 1,
        checkpoint_path: str | os.PathLike | None = None, checkpoint_every: int | None = None,
        resume_from: str | os.PathLike | None = None, log_every: int | None = None) -> History:
    """Train ``model`` for ``steps`` optimisation steps or ``epochs`` passes over ``batches``.

    Each step: zero the gradients; for each of ``grad_accum`` batches, ``loss = loss_fn(model, batch)``
    (under bf16 autocast on CUDA when ``amp``) and backward of ``loss / grad_accum``; record the
    gradient norm and clip it to ``max_norm`` (if given), ``optimizer.step()``, then
    ``scheduler.step()`` (any ``LambdaLR`` from ``transformer_ref.schedules``, stepped once per
    optimisation step).

    batches: re-iterable of batches (tensors, tuples, lists or dicts of tensors), e.g.
        ``data.BatchIterator`` or ``distributed.ShardedBatches``; with ``steps`` it is cycled as often as
        needed.
    grad_accum: batches per optimisation step (gradient accumulation). The gradient is that of the
        mean of their losses: for a loss that is a mean over equal-sized batches, k batches of B rows
        give the step one batch of k*B rows would. ``ShardedBatches(..., grad_accum=k)`` splits each
        global batch into those k batches.
    device: moves the model there first; default: where the model already is. Batches follow.
    progress: show a tqdm bar with the running loss (False for tests and scripts).
    log_every: also print a line (step, loss, learning rate, gradient norm) every ``log_every`` steps,
        for logs that outlive the bar (batch jobs).

    Data parallel (under torchrun): pass the model wrapped by ``distributed.wrap_model`` (DDP) and
    batches that give each process its shard (``distributed.ShardedBatches``). The gradients are
    averaged over the processes once per step (not on the accumulation batches), the recorded loss is
    the mean over processes, and only rank 0 shows a progress bar and writes checkpoints.

    checkpoint_path, checkpoint_every: write a checkpoint (model, optimizer, scheduler, step, the
        history so far, every process's RNG state and the state of ``batches`` if it has a
        ``state_dict``) every ``checkpoint_every`` steps and after the last step.
    resume_from: a checkpoint written by ``fit``; training continues at its step (up to ``steps`` in
        all) with the same RNG states and batches, so the run ends as an uninterrupted one would.
        Batches without a ``state_dict`` are re-iterated from the start and the used ones skipped:
        exact for batches that shuffle with their own seeded generator (``BatchIterator(...,
        generator=0)``), not for ones that draw on the global RNG.
    Returns the ``History`` of the run (from step 0 when resumed).
    """
    _check_fit_args(batches, max_norm, grad_accum, checkpoint_path, checkpoint_every, log_every)
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    total = _total_steps(batches, steps, epochs, grad_accum)
    history, start = History(), 0
    if resume_from is not None:
        start, history = _resume(resume_from, model, optimizer, scheduler, batches, device)
        if start > total:
            raise ValueError(f"the checkpoint at {resume_from} is at step {start}, past the {total} steps asked for")
    stream = _cycle(batches)
    if resume_from is not None and not hasattr(batches, "load_state_dict"):
        for _ in range(start * grad_accum):             # replay the batches the first run used
            next(stream)
    model.train()
    with tqdm(total=total, initial=start, desc=desc, leave=False,
              disable=not (progress and distributed.is_main_process())) as bar:
        for step in range(start, total):
            optimizer.zero_grad(set_to_none=True)
            loss = _forward_backward(model, itertools.islice(stream, grad_accum), grad_accum, loss_fn, device, amp)
            if max_norm is not None:
                norm = nn.utils.clip_grad_norm_(params, max_norm)
            else:
                norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            history.lr.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            history.loss.append(distributed.all_mean(loss).item())   # the mean over the processes
            history.grad_norm.append(norm.item())       # DDP averaged the gradients: equal on every rank
            bar.update(1)
            if step % 10 == 0 or step == total - 1:
                bar.set_postfix(loss=f"{history.loss[-1]:.4f}", lr=f"{history.lr[-1]:.2e}")
            if log_every is not None and (step + 1) % log_every == 0 and distributed.is_main_process():
                tqdm.write(f"{desc} step {step + 1}/{total}  loss {history.loss[-1]:.4f}  "
                           f"lr {history.lr[-1]:.2e}  grad norm {history.grad_norm[-1]:.3f}")
            if checkpoint_path is not None and (
                    step == total - 1 or (checkpoint_every is not None and (step + 1) % checkpoint_every == 0)):
                _save_training_state(checkpoint_path, model, optimizer, scheduler, step + 1, history, batches)
    return history


def _forward_backward(model: nn.Module, batches: Iterator, k: int, loss_fn: LossFn, device: torch.device,
                      amp: bool) -> torch.Tensor:
    """Accumulate the gradient of the mean of ``loss_fn`` over the ``k`` ``batches`` of one step in
    ``.grad``; returns that mean loss (detached, float32).

    Each batch's loss is divided by k before its backward, so the k backward passes add up to the
    gradient of the mean. A DDP model all-reduces the gradients in backward(); under ``no_sync()``
    it only accumulates them locally, so the processes communicate once per step, on the last batch.
    """
    parallel = isinstance(model, nn.parallel.DistributedDataParallel)
    total = None
    for i, batch in enumerate(batches):
        with model.no_sync() if parallel and i < k - 1 else contextlib.nullcontext():
            with autocast(device, amp):
                loss = loss_fn(model, to_device(batch, device))
            if loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar tensor; got shape {tuple(loss.shape)}")
            (loss / k if k > 1 else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return (total / k if k > 1 else total).float()


def _check_fit_args(batches: Iterable, max_norm: float | None, grad_accum: int,
                    checkpoint_path: str | os.PathLike | None, checkpoint_every: int | None,
                    log_every: int | None) -> None:
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"max_norm must be a positive number or None; got {max_norm!r}")
    check_positive_int(grad_accum, "grad_accum")
    if getattr(batches, "grad_accum", grad_accum) != grad_accum:
        raise ValueError(f"grad_accum ({grad_accum}) must equal batches.grad_accum ({batches.grad_accum}), the "
                         "micro-batches per global batch the batches were split into")
    if checkpoint_every is not None:
        check_positive_int(checkpoint_every, "checkpoint_every")
        if checkpoint_path is None:
            raise ValueError("checkpoint_every was given without checkpoint_path; say where to write")
    if log_every is not None:
        check_positive_int(log_every, "log_every")


def rng_state() -> dict[str, Any]:
    """The state of Python's ``random``, NumPy's and torch's global RNGs (and the current CUDA
    device's), as plain values and tensors that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states that ``rng_state()`` returned."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def _save_training_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                         scheduler: torch.optim.lr_scheduler.LRScheduler | None, step: int,
                         history: History, batches: Iterable) -> None:
    """Every process sends its RNG state to rank 0, which writes the checkpoint (to a temporary
    file first, so an interrupted write never replaces a good checkpoint); the others wait."""
    rng = distributed.all_gather_object(rng_state())
    if distributed.is_main_process():
        tmp = f"{os.fspath(path)}.tmp"
        save_checkpoint(tmp, model, optimizer, step, scheduler,
                        history={"loss": history.loss, "lr": history.lr, "grad_norm": history.grad_norm},
                        rng=rng, batches=batches.state_dict() if hasattr(batches, "state_dict") else None)
        os.replace(tmp, path)
    distributed.barrier()


def _resume(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler | None, batches: Iterable,
            device: torch.device) -> tuple[int, History]:
    """Load what ``_save_training_state`` wrote; returns (step, history so far)."""
    info = load_checkpoint(path, model, optimizer, scheduler, map_location=device)
    missing = [k for k in ("history", "rng", "batches") if k not in info]
    if missing:
        raise ValueError(f"the checkpoint at {path} was not written by fit (it has no {', '.join(missing)}); "
                         "load it with load_checkpoint and start a new run instead")
    rank, world = distributed.get_rank(), distributed.get_world_size()
    if len(info["rng"]) == world:
        set_rng_state(info["rng"][rank])
    elif distributed.is_main_process():
        warnings.warn(f"the checkpoint at {path} was written by {len(info['rng'])} processes, this run has {world}: "
                      "the RNG states are not restored, so the run will not repeat an uninterrupted one exactly",
                      stacklevel=3)
    if hasattr(batches, "load_state_dict"):
        if info["batches"] is None:
            raise ValueError(f"the checkpoint at {path} holds no state for the batches; resume with batches "
                             f"like those of the first run, not a {type(batches).__name__}")
        batches.load_state_dict(info["batches"])
    return info["step"], History(**info["history"])


# ----------------------------------------------------------------------------------------------
# Ready-made loss functions
# ----------------------------------------------------------------------------------------------

def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, ``output.logits``, ``output["logits"]``,
    or the first element of a tuple (models that also return attention weights)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find the logits in a model output of type {type(output).__name__}")


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = PAD_ID,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not ``ignore_index``.
    logits (B, T, V) (computed in float32), labels (B, T) long."""
    check_ndim(logits, "logits", 3, "(B, T, vocab_size)")
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=ignore_index,
                           label_smoothing=label_smoothing)


def seq2seq_loss(pad_id: int = PAD_ID, label_smoothing: float = 0.0) -> LossFn:
    """Teacher-forcing loss for encoder-decoders called as ``model(src, tgt_in) -> logits``
    (``model.Transformer``, ``rnn.Seq2Seq``). Batch = (src (B, S), tgt (B, T)), tgt = <bos> ... <eos>;
    predicts tgt[:, 1:] from tgt[:, :-1], ignoring padding."""
    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        src, tgt = batch
        tgt_in, labels = split_target(tgt)
        return token_cross_entropy(logits_of(model(src, tgt_in)), labels, pad_id, label_smoothing)
    return loss_fn


def language_model_loss(pad_id: int = PAD_ID) -> LossFn:
    """Next-token loss for causal LMs called as ``model(tokens) -> logits`` (``DecoderOnlyLM``).
    Batch = tokens (B, T) or a tuple whose first element is tokens; predicts tokens[:, 1:]."""
    def loss_fn(model: nn.Module, batch: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        tokens = batch if isinstance(batch, torch.Tensor) else batch[0]
        return token_cross_entropy(logits_of(model(tokens[:, :-1])), tokens[:, 1:], pad_id)
    return loss_fn


def classification_loss(label_smoothing: float = 0.0) -> LossFn:
    """Cross-entropy for classifiers called as ``model(inputs) -> logits (B, num_classes)``
    (``vit.VisionTransformer``, ``bert.BertForSequenceClassification``). Batch = (inputs, labels)."""
    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, labels = batch
        return F.cross_entropy(logits_of(model(inputs)).float(), labels, label_smoothing=label_smoothing)
    return loss_fn


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def evaluate_loss(model: nn.Module, batches: Iterable, loss_fn: LossFn, amp: bool = True) -> float:
    """Mean of ``loss_fn`` over one pass of ``batches``, in eval mode without gradients."""
    device = model_device(model)
    losses = []
    with _eval_mode(model):
        for batch in batches:
            with autocast(device, amp):
                losses.append(loss_fn(model, to_device(batch, device)).item())
    if not losses:
        raise ValueError("batches yielded no batch")
    return sum(losses) / len(losses)


def _strip(row: list[int], bos_id: int, eos_id: int) -> list[int]:
    """Tokens after a leading <bos>, up to (not including) the first <eos>."""
    if row and row[0] == bos_id:
        row = row[1:]
    return row[:row.index(eos_id)] if eos_id in row else row


def exact_match_accuracy(model: nn.Module, src: torch.Tensor, tgt: torch.Tensor,
                         bos_id: int = BOS_ID, eos_id: int = EOS_ID, max_len: int | None = None,
                         batch_size: int = 256) -> float:
    """Fraction of examples whose greedy decoding equals the target exactly.

    model: has ``greedy_decode(src, bos_id, eos_id, max_len)`` returning tokens (B, T) or a tuple
        whose first element is the tokens (``rnn.Seq2Seq`` also returns attention weights).
    src (N, S), tgt (N, T) = <bos> y <eos> <pad>...  Each prediction is compared up to its first
        <eos>; a prediction that never emits <eos> counts as wrong (unless y fills it exactly).
    max_len: decoding budget, default T + 1.
    """
    check_ndim(src, "src", 2, "(N, S)")
    check_ndim(tgt, "tgt", 2, "(N, T)")
    if src.size(0) != tgt.size(0):
        raise ValueError(f"src and tgt must have the same number of rows; got {src.size(0)} and {tgt.size(0)}")
    max_len = tgt.size(1) + 1 if max_len is None else max_len
    device = model_device(model)
    correct = 0
    with _eval_mode(model):
        for start in range(0, src.size(0), check_positive_int(batch_size, "batch_size")):
            out = model.greedy_decode(src[start:start + batch_size].to(device), bos_id, eos_id, max_len)
            pred = out[0] if isinstance(out, (tuple, list)) else out
            for p, t in zip(pred.tolist(), tgt[start:start + batch_size].tolist()):
                correct += _strip(p, bos_id, eos_id) == _strip(t, bos_id, eos_id)
    return correct / src.size(0)


def classification_accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                            batch_size: int = 256) -> float:
    """Fraction of ``inputs`` whose arg-max logit equals ``labels`` (N,)."""
    check_ndim(labels, "labels", 1, "(N,)")
    device = model_device(model)
    correct = 0
    with _eval_mode(model):
        for start in range(0, inputs.size(0), check_positive_int(batch_size, "batch_size")):
            logits = logits_of(model(inputs[start:start + batch_size].to(device)))
            correct += (logits.argmax(-1).cpu() == labels[start:start + batch_size]).sum().item()
    return correct / inputs.size(0)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, step: int = 0,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    **extra: Any) -> None:
    """Save model, optimizer and scheduler state dicts, the step count and ``extra`` (plain
    Python values or tensors, e.g. a config dict) to ``path`` with ``torch.save``. A model wrapped
    in ``DistributedDataParallel`` is saved as the plain model (no ``module.`` prefix)."""
    torch.save({"model": distributed.unwrap_model(model).state_dict(),
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "step": step, "extra": extra}, path)


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    map_location: torch.device | str | None = None) -> dict[str, Any]:
    """Load what ``save_checkpoint`` wrote into ``model`` (and ``optimizer``/``scheduler`` if
    given), onto ``map_location`` (default: the model's device), with ``weights_only=True``.
    Returns {"step": int, **extra}."""
    state = torch.load(path, map_location=map_location or model_device(model), weights_only=True)
    distributed.unwrap_model(model).load_state_dict(state["model"])
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None:
            if state[name] is None:
                raise ValueError(f"{name} was given but the checkpoint at {path} holds no {name} state")
            obj.load_state_dict(state[name])
    return {"step": state["step"], **state["extra"]}


# ----------------------------------------------------------------------------------------------
# Command line: python -m transformer_ref.train (one process), or under torchrun (data parallel)
# ----------------------------------------------------------------------------------------------

@dataclass
class _Task:
    """What the command line trains: a model, its training tensors, loss and a held-out metric."""
    model: nn.Module
    tensors: tuple[torch.Tensor, ...]
    loss_fn: LossFn
    evaluate: Callable[[nn.Module], tuple[str, float]]


def _reverse_task(args: Any) -> _Task:
    """The encoder-decoder Transformer learns to reverse digit sequences (chapter 7)."""
    from transformer_ref.data import SEQUENCE_VOCAB, reverse_task
    from transformer_ref.model import Transformer
    vocab = len(SEQUENCE_VOCAB)
    model = Transformer(vocab, vocab, d_model=args.d_model, num_heads=args.num_heads,
                        num_encoder_layers=args.num_layers, num_decoder_layers=args.num_layers,
                        d_ff=args.d_ff, dropout=args.dropout, max_len=32)
    test_src, test_tgt = reverse_task(300, min_len=3, max_len=8, generator=args.seed + 1000)
    return _Task(model, reverse_task(args.num_examples, min_len=3, max_len=8, generator=args.seed),
                 seq2seq_loss(),
                 lambda m: ("exact-match accuracy", exact_match_accuracy(m, test_src, test_tgt)))


def _lm_task(args: Any) -> _Task:
    """A decoder-only LM learns the templated corpus (chapter 5)."""
    from transformer_ref.data import TEXT_VOCAB, encode_sentences, text_corpus
    from transformer_ref.model import DecoderOnlyLM

    def sentences(num_documents: int, seed: int) -> torch.Tensor:
        return encode_sentences([s for d in text_corpus(num_documents, 4, generator=seed) for s in d.sentences])
    tokens, test_tokens = sentences(max(1, args.num_examples // 4), args.seed), sentences(100, args.seed + 1000)
    max_len = max(tokens.size(1), test_tokens.size(1))
    model = DecoderOnlyLM(len(TEXT_VOCAB), d_model=args.d_model, num_heads=args.num_heads,
                          num_layers=args.num_layers, d_ff=args.d_ff, max_len=max_len, dropout=args.dropout)
    loss_fn = language_model_loss()
    return _Task(model, (tokens,), loss_fn,
                 lambda m: ("held-out loss", evaluate_loss(m, [test_tokens], loss_fn)))


def _shapes_task(args: Any) -> _Task:
    """A ViT learns to tell the five shapes apart (chapter 9)."""
    from transformer_ref.data import SHAPE_CLASSES, shapes_dataset
    from transformer_ref.vit import VisionTransformer
    model = VisionTransformer(image_size=28, patch_size=7, in_channels=1, num_classes=len(SHAPE_CLASSES),
                              d_model=args.d_model, num_layers=args.num_layers, num_heads=args.num_heads,
                              d_ff=args.d_ff, dropout=args.dropout)
    test_x, test_y = shapes_dataset(500, generator=args.seed + 1000)
    return _Task(model, shapes_dataset(args.num_examples, generator=args.seed), classification_loss(),
                 lambda m: ("accuracy", classification_accuracy(m, test_x, test_y)))


TASKS: dict[str, Callable[[Any], _Task]] = {"reverse": _reverse_task, "lm": _lm_task, "shapes": _shapes_task}


def _parser() -> "argparse.ArgumentParser":
    import argparse
    p = argparse.ArgumentParser(
        prog="python -m transformer_ref.train",
        description="Train a course model on its toy task, in one process or data parallel under torchrun "
                    "(e.g. torchrun --nproc-per-node 2 -m transformer_ref.train --task shapes).")
    p.add_argument("--task", choices=sorted(TASKS), default="reverse",
                   help="reverse: Transformer on sequence reversal; lm: decoder-only LM on the text corpus; "
                        "shapes: ViT on the shapes images (default: reverse)")
    p.add_argument("--steps", type=int, default=300, help="optimisation steps (default: 300)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="global batch per optimisation step, over all processes and accumulation steps; "
                        "must be divisible by processes x --grad-accum (default: 64)")
    p.add_argument("--grad-accum", type=int, default=1, help="batches accumulated per step (default: 1)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default: 3e-3)")
    p.add_argument("--warmup-steps", type=int,
                   help="linear warm-up, then cosine decay to 0 (default: a tenth of --steps)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    p.add_argument("--max-norm", type=float, default=1.0, help="gradient clipping norm (default: 1.0)")
    p.add_argument("--num-examples", type=int, default=4096, help="training examples (default: 4096)")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="model initialisation and data order (default: 0)")
    p.add_argument("--checkpoint", metavar="PATH", help="write a checkpoint here (rank 0), at the end and "
                                                         "every --checkpoint-every steps")
    p.add_argument("--checkpoint-every", type=int, metavar="N")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint if that file exists (else start from step 0)")
    p.add_argument("--log-every", type=int, default=50, metavar="N",
                   help="print a log line every N steps on rank 0 (default: 50)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA instead of bf16 autocast")
    p.add_argument("--device", choices=["cuda", "mps", "cpu"],
                   help="default: cuda, then mps, then cpu; under torchrun cuda (NCCL) or cpu (gloo)")
    p.add_argument("--backend", choices=["nccl", "gloo"],
                   help="process group backend under torchrun (default: nccl on GPUs, gloo with --device cpu "
                        "or without GPUs)")
    return p


def main(argv: list[str] | None = None) -> History:
    """``python -m transformer_ref.train [options]``: see ``--help``. Returns the run's history.

    Under torchrun each process trains a copy of the model on its shard of every global batch
    (``distributed.ShardedBatches``, DDP); rank 0 prints, shows the progress bar, writes the
    checkpoint and evaluates. The same global batch gives the same run for any number of processes
    and accumulation steps (up to floating-point rounding; with dropout, up to the masks drawn).
    """
    import time

    from transformer_ref import schedules
    args = _parser().parse_args(argv)
    if args.resume and args.checkpoint is None:
        raise SystemExit("--resume needs --checkpoint PATH (the file to continue from)")
    if args.backend == "nccl" and args.device == "cpu":
        raise SystemExit("--backend nccl needs GPUs; with --device cpu use --backend gloo")
    ctx = distributed.init_distributed(args.backend or ("gloo" if args.device == "cpu" else None))
    if ctx.backend is None and args.device is not None:          # one process: the device asked for
        ctx = dataclasses.replace(ctx, device=torch.device(args.device))
    elif args.device is not None and ctx.device.type != args.device:
        raise SystemExit(f"--device {args.device} does not fit the {ctx.backend} backend, which trains on "
                         f"{ctx.device.type}")
    try:
        per_step = ctx.world_size * args.grad_accum
        if args.batch_size % per_step:
            raise SystemExit(f"--batch-size ({args.batch_size}) must be divisible by processes x --grad-accum "
                             f"= {ctx.world_size} x {args.grad_accum} = {per_step}")
        seed_everything(args.seed)
        task = TASKS[args.task](args)
        torch.manual_seed(args.seed + ctx.rank)      # different dropout masks on every process
        model = distributed.wrap_model(task.model, ctx)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        warmup = max(1, args.steps // 10) if args.warmup_steps is None else args.warmup_steps
        scheduler = schedules.warmup_cosine_scheduler(optimizer, warmup, args.steps)
        batches = distributed.ShardedBatches(*task.tensors, batch_size=args.batch_size,
                                             grad_accum=args.grad_accum, seed=args.seed)
        found = distributed.all_gather_object(bool(args.resume) and os.path.exists(args.checkpoint))
        if any(found) and not all(found):
            raise SystemExit(f"--resume: {args.checkpoint} exists for ranks {[r for r, f in enumerate(found) if f]} "
                             "but not for the others; put checkpoints on a filesystem that every node sees")
        resume = args.checkpoint if all(found) else None
        if ctx.is_main:
            print(f"{args.task}: {sum(p.numel() for p in task.model.parameters()):,} parameters on "
                  f"{ctx.world_size} process(es) ({ctx.backend or 'no process group'}, {ctx.device}); "
                  f"global batch {args.batch_size} = {ctx.world_size} x {args.grad_accum} accumulation x "
                  f"{args.batch_size // per_step} rows" + (f"; resuming from {resume}" if resume else ""),
                  flush=True)
        start = time.perf_counter()
        history = fit(model, batches, task.loss_fn, optimizer, steps=args.steps, scheduler=scheduler,
                      max_norm=args.max_norm, device=ctx.device, amp=not args.no_amp,
                      progress=not args.no_progress, desc=args.task, grad_accum=args.grad_accum,
                      checkpoint_path=args.checkpoint, checkpoint_every=args.checkpoint_every,
                      resume_from=resume, log_every=args.log_every)
        if ctx.is_main:
            name, value = task.evaluate(distributed.unwrap_model(model))
            print(f"{args.task}: {len(history)} steps, final loss {history.loss[-1]:.4f}, {name} {value:.4f}, "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
        return history
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
