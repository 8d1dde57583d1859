"""One training loop for every model in the course.

- ``get_device()``: CUDA, then Apple MPS, then CPU.  ``seed_everything(seed)``: Python, NumPy, torch.
- ``fit(model, batches, loss_fn, optimizer, steps=... | epochs=..., scheduler=..., max_norm=...)``
  runs the loop and returns a ``History`` (loss, learning rate and gradient norm per step).
  On CUDA the forward pass runs under bf16 autocast; elsewhere in float32.
- A loss function takes ``(model, batch)`` and returns a scalar tensor, so one loop serves every
  model: ``seq2seq_loss`` (teacher forcing), ``language_model_loss`` (next token) and
  ``classification_loss`` are ready-made; write your own for anything else (e.g. masked LM).
- ``exact_match_accuracy`` (greedy decoding), ``classification_accuracy``, ``evaluate_loss``.
- ``save_checkpoint`` / ``load_checkpoint``: model + optimizer (+ scheduler) + step.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

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


def _steps_of(batches: Iterable, steps: int | None, epochs: int | None) -> tuple[Iterator, int]:
    """An iterator over ``steps`` batches (cycling ``batches``) or over ``epochs`` passes."""
    if (steps is None) == (epochs is None):
        raise ValueError(f"give exactly one of steps and epochs; got steps={steps!r}, epochs={epochs!r}")
    if epochs is not None:
        check_positive_int(epochs, "epochs")
        try:
            total = epochs * len(batches)   # type: ignore[arg-type]
        except TypeError:
            raise TypeError("batches must have a len() when training by epochs; "
                            f"got {type(batches).__name__} (pass steps=... instead)") from None
    else:
        total = check_positive_int(steps, "steps")

    def gen() -> Iterator:
        done = 0
        while done < total:
            started = done
            for batch in batches:
                yield batch
                done += 1
                if done == total:
                    return
            if done == started:
                raise ValueError("batches yielded no batch on a pass; pass a re-iterable such as "
                                 "data.BatchIterator, not a one-shot generator")
    return gen(), total


def fit(model: nn.Module, batches: Iterable, loss_fn: LossFn, optimizer: torch.optim.Optimizer, *,
        steps: int | None = None, epochs: int | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        max_norm: float | None = None, device: torch.device | str | None = None,
        amp: bool = True, progress: bool = True, desc: str = "train") -> History:
    """Train ``model`` for ``steps`` optimisation steps or ``epochs`` passes over ``batches``.

    Each step: zero the gradients, ``loss = loss_fn(model, batch)`` (under bf16 autocast on CUDA
    when ``amp``), backward, record the gradient norm and clip it to ``max_norm`` (if given),
    ``optimizer.step()``, then ``scheduler.step()`` (any ``LambdaLR`` from
    ``transformer_ref.schedules``, stepped once per optimisation step).

    batches: re-iterable of batches (tensors, tuples, lists or dicts of tensors), e.g.
        ``data.BatchIterator``; with ``steps`` it is cycled as often as needed.
    device: moves the model there first; default: where the model already is. Batches follow.
    progress: show a tqdm bar with the running loss (False for tests and scripts).
    Returns the ``History`` of this run.
    """
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"max_norm must be a positive number or None; got {max_norm!r}")
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    stream, total = _steps_of(batches, steps, epochs)
    history = History()
    model.train()
    with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for step, batch in enumerate(stream):
            batch = to_device(batch, device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                loss = loss_fn(model, batch)
            if loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar tensor; got shape {tuple(loss.shape)}")
            loss.backward()
            if max_norm is not None:
                norm = nn.utils.clip_grad_norm_(params, max_norm)
            else:
                norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            history.lr.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            history.loss.append(loss.item())
            history.grad_norm.append(norm.item())
            bar.update(1)
            if step % 10 == 0 or step == total - 1:
                bar.set_postfix(loss=f"{history.loss[-1]:.4f}", lr=f"{history.lr[-1]:.2e}")
    return history


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
    Python values or tensors, e.g. a config dict) to ``path`` with ``torch.save``."""
    torch.save({"model": model.state_dict(),
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
    model.load_state_dict(state["model"])
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None:
            if state[name] is None:
                raise ValueError(f"{name} was given but the checkpoint at {path} holds no {name} state")
            obj.load_state_dict(state[name])
    return {"step": state["step"], **state["extra"]}
