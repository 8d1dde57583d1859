"""Cases: the inputs a graded item is called on, and the random-input helpers the assignment modules share.

Every case belongs to a group ("basic shapes", "masks", "float64 and odd sizes", ...): partial credit
is given per group. Cases are drawn from a local ``torch.Generator``, so one seed gives the same
inputs everywhere; everything in a case is picklable (the grader runs submissions in another process).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from grader.checks.item import Item

GPU_GROUP = "on the GPU"
META = torch.device("meta")   # tensors with a shape, a dtype and a device, but no values (see Case)


@dataclass
class Case:
    """One set of inputs for a graded item.

    Functions are called as ``impl(*args, **kwargs)``. Classes are built as ``impl(**init)``, given
    the parameters in ``state`` (by name, e.g. ``"W_q.weight"``), put in training mode when
    ``train`` is True (evaluation mode otherwise) and called as ``module(*args, **kwargs)``.

    Tensors on the ``meta`` device have a shape, a dtype and a device but no values: a case with
    ``meta_inputs`` (its tensor inputs are moved to meta for the call) or ``device=torch.device("meta")``
    checks, on a machine without a GPU, that the result lands on the device asked for; only its shape, dtype
    and device are compared (the inputs keep their values on the CPU, for code that must read them: see
    run._run_with_values). ``default_device`` (e.g. "meta") is the
    default device while the call runs (``with torch.device(...)``): with inputs on the CPU, every tensor the
    submission makes without ``device=`` lands there instead of on the inputs' device.
    """

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    init: dict | None = None
    state: dict | None = None
    train: bool = False
    group: str = "basic"
    default_device: str | None = None
    meta_inputs: bool = False


def single_threaded(fn: Callable) -> Callable:
    """Run fn on one CPU thread (restored afterwards): the exercises' tensors are tiny, and on a busy
    machine the thread pool's synchronisation makes small operations 5-10x slower."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(saved)
    return wrapper


@single_threaded
def make_cases(item: Item, seed: int = 0, cuda: bool = False) -> list[Case]:
    """Inputs for one graded item, drawn from a local ``torch.Generator`` seeded with ``seed``.

    With ``cuda=True`` and a GPU present, CUDA copies of the first three cases (and of every case
    that passes ``device=torch.device("cpu")``) are appended, in the group "on the GPU".
    """
    g = torch.Generator().manual_seed(seed)
    cases = item.cases(g, seed)
    if cuda and torch.cuda.is_available():
        cases += [Case(c.label + ", on cuda", to_device(c.args, "cuda"), to_device(c.kwargs, "cuda"), c.init,
                       to_device(c.state, "cuda"), c.train, GPU_GROUP) for c in cases[:3]]
        cases += [Case(c.label.replace("'cpu'", "'cuda'"), c.args, {**c.kwargs, "device": torch.device("cuda")},
                       group=GPU_GROUP)
                  for c in cases if _device_kwarg(c) == "cpu" and c.group != GPU_GROUP]
    return cases


def on_meta(case: Case) -> bool:
    """Whether `case` asks for a result on the meta device: meta inputs or ``device=torch.device("meta")``."""
    return case.meta_inputs or _device_kwarg(case) == "meta"


def _device_kwarg(case: Case) -> str | None:
    """The type of the torch.device a case passes as `device` ("cpu", "meta"), or None."""
    device = case.kwargs.get("device")
    return device.type if isinstance(device, torch.device) else None


def groups(cases: Sequence[Case]) -> list[str]:
    """The groups of `cases`, in the order they first appear."""
    return list(dict.fromkeys(c.group for c in cases))


# ---------------------------------------------------------------- random inputs

def randn(g: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Standard normal values times `scale`, drawn from `g`."""
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def random_mask(g: torch.Generator, *shape: int, empty_row: bool = True) -> torch.Tensor:
    """A random bool mask (True = may attend) with, when asked, one query row that may attend to nothing."""
    mask = torch.rand(*shape, generator=g) < 0.6
    mask[..., 0] |= ~mask.any(-1)        # every row keeps a key ...
    if empty_row:
        mask[(0,) * (mask.dim() - 2) + (-1,)] = False   # ... except one, fully masked
    return mask


def causal(T: int) -> torch.Tensor:
    """The (T, T) lower-triangular bool mask (True = may attend)."""
    return torch.ones(T, T, dtype=torch.bool).tril()


def tokens(g: torch.Generator, B: int, T: int, pad_id: int, vocab: int = 9) -> torch.Tensor:
    """Token ids with padding at the end of each row (row 0 unpadded, the last row all padding when B > 2)."""
    ids = torch.randint(0, vocab, (B, T), generator=g)
    ids = torch.where(ids == pad_id, (pad_id + 1) % vocab, ids)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    if B > 2:
        lengths[-1] = 0
    return ids.masked_fill(torch.arange(T) >= lengths[:, None], pad_id)


def linear_state(g: torch.Generator, names: Sequence[str], d_in: int, d_out: int, dtype: torch.dtype,
                 bias: bool = True) -> dict:
    """Random parameters for nn.Linear(d_in, d_out) layers called `names`, by parameter name."""
    state = {}
    for n in names:
        state[f"{n}.weight"] = randn(g, d_out, d_in, dtype=dtype, scale=d_in ** -0.5)
        if bias:
            state[f"{n}.bias"] = randn(g, d_out, dtype=dtype, scale=0.1)
    return state


# ---------------------------------------------------------------- copies

def tree_map(fn: Callable, obj: Any) -> Any:
    """fn applied to every tensor in obj (tuples, lists and dicts are rebuilt)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(tree_map(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    return obj


def clone(obj: Any) -> Any:
    """Copies of the tensors, modules and random generators in obj (a generator copy continues from the same state)."""
    if isinstance(obj, torch.Generator):
        copy_ = torch.Generator(device=obj.device)
        copy_.set_state(obj.get_state())
        return copy_
    if isinstance(obj, (tuple, list)):
        return type(obj)(clone(o) for o in obj)
    if isinstance(obj, dict):
        return {k: clone(v) for k, v in obj.items()}
    if isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj)
    return obj.detach().clone() if isinstance(obj, torch.Tensor) else obj


def to_device(obj: Any, device: torch.device | str) -> Any:
    """obj with its tensors moved to device (a generator is re-created there with the same seed)."""
    if isinstance(obj, torch.Generator):
        return torch.Generator(device=device).manual_seed(obj.initial_seed())
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj).to(device)
    return obj.to(device) if isinstance(obj, torch.Tensor) else obj


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exactly equal, NaN equal to NaN (meta tensors have no values: equal shape, dtype and device)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_meta or b.is_meta:
        return a.device == b.device
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(a, b) or torch.equal(a.isnan(), b.isnan()) and
                    torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))
    return bool(torch.equal(a, b))
