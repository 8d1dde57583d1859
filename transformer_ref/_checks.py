"""Argument checks shared by the public functions, so every error message reads the same.

Each check names the argument, what was expected and what was given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    return x


def check_same_rows(tensors: Sequence[torch.Tensor], owner: str) -> None:
    """Tensors that are batched together: at least one, each a tensor with the first one's number of rows."""
    if not tensors:
        raise ValueError(f"{owner} needs at least one tensor; got none")
    for i, t in enumerate(tensors):
        check_tensor(t, f"tensors[{i}]")
        if t.dim() == 0 or t.size(0) != tensors[0].size(0):
            raise ValueError(f"tensors[{i}] must have {tensors[0].size(0)} rows like tensors[0]; "
                             f"got shape {tuple(t.shape)}")


def check_floating(x: torch.Tensor, name: str) -> None:
    check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got {x.dtype}")


def check_ndim(x: torch.Tensor, name: str, ndim: int | Sequence[int], shape_hint: str) -> None:
    """shape_hint describes the expected layout, e.g. '(B, T, d_model)'."""
    check_tensor(x, name)
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.dim() not in allowed:
        raise ValueError(f"{name} must have shape {shape_hint} ({' or '.join(map(str, allowed))}-D); "
                         f"got shape {tuple(x.shape)}")


def check_size(x: torch.Tensor, name: str, dim: int, size: int, what: str) -> None:
    """Dimension `dim` of x must equal `size`; `what` names that size, e.g. 'd_model'."""
    if x.size(dim) != size:
        raise ValueError(f"{name}.shape[{dim}] must equal {what} = {size}; got shape {tuple(x.shape)}")


def check_same_device(*named: tuple[str, torch.Tensor | None]) -> None:
    tensors = [(n, t) for n, t in named if t is not None]
    if not tensors:
        return
    first_name, first = tensors[0]
    for n, t in tensors[1:]:
        if t.device != first.device:
            raise ValueError(f"{n} is on {t.device} but {first_name} is on {first.device}; "
                             f"move them to one device (e.g. {n}.to({first_name}.device))")


def check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def check_divisible(d_model: int, num_heads: int) -> None:
    if d_model % num_heads != 0:
        raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads}); "
                         f"d_k = d_model / num_heads would not be an integer")


def check_mask(mask: torch.Tensor | None, name: str, target_shape: Sequence[int],
               target_desc: str = "(..., T_q, T_k)", device: torch.device | None = None) -> None:
    """A mask must be bool (True = may attend) and broadcast to target_shape."""
    if mask is None:
        return
    check_tensor(mask, name)
    if mask.dtype != torch.bool:
        hint = ""
        if mask.is_floating_point():
            hint = (" (an additive float mask? pass a bool mask instead, e.g. mask = additive == 0)")
        elif mask.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
            hint = " (a 0/1 integer mask? convert with mask.bool())"
        raise TypeError(f"{name} must be a bool tensor (True = may attend); got {mask.dtype}{hint}")
    if not broadcasts_to(tuple(mask.shape), tuple(target_shape)):
        raise ValueError(f"{name} of shape {tuple(mask.shape)} does not broadcast to "
                         f"{target_desc} = {tuple(target_shape)}")
    if device is not None and mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but the inputs are on {device}; "
                         f"move it with {name}.to({str(device)!r})")


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of `shape` broadcasts to exactly `target` (each trailing size equal or 1).

    The same answer as torch.broadcast_shapes(shape, target) == target, in plain Python: that call
    costs ~0.1 ms, which every attention layer of a small model would pay on every step.
    """
    if len(shape) > len(target):
        return False
    return all(s == t or s == 1 for s, t in zip(reversed(shape), reversed(target)))


def check_same_dtype(*named: tuple[str, torch.Tensor]) -> None:
    first_name, first = named[0]
    for n, t in named[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{n} has dtype {t.dtype} but {first_name} has dtype {first.dtype}; "
                            f"convert one of them (e.g. {n}.to({first_name}.dtype))")


def check_integer(x: torch.Tensor, name: str, what: str = "token ids") -> None:
    """x must hold integers (e.g. token ids for an embedding), not floats or bools."""
    check_tensor(x, name)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of {what} (torch.long); got {x.dtype}")


def check_min_ndim(x: torch.Tensor, name: str, ndim: int, shape_hint: str) -> None:
    """x must have at least `ndim` dimensions; shape_hint e.g. '(..., T_q, d_k)'."""
    check_tensor(x, name)
    if x.dim() < ndim:
        raise ValueError(f"{name} must have shape {shape_hint} (at least {ndim}-D); "
                         f"got shape {tuple(x.shape)}")


def check_module_device(x: torch.Tensor, name: str, module: torch.nn.Module) -> None:
    """x must be on the device of the module's parameters."""
    param = next(module.parameters(), None)
    if param is not None and x.device != param.device:
        raise ValueError(f"{name} is on {x.device} but the parameters of {type(module).__name__} are on "
                         f"{param.device}; move one of them (e.g. {name}.to({str(param.device)!r}))")


def check_choice(value: object, name: str, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_token_id(value: object, name: str, vocab_size: int, vocab_name: str) -> int:
    """A single token id (bos_id, eos_id, pad_id) must be an int in [0, vocab_size)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise ValueError(f"{name} must be an int in [0, {vocab_name} = {vocab_size}); got {value!r}")
    return value


def check_values(ok: torch.Tensor, message: str) -> None:
    """Raise ValueError(message) unless the bool tensor ``ok`` holds True, without a GPU-to-CPU sync.

    On the CPU (eager) the check runs at once. On a GPU, and while torch.compile traces, it becomes an
    asynchronous device assertion (``torch._assert_async``): reading the result back here would stall
    the GPU every step. A failure there surfaces as a RuntimeError (a device-side assert) at the next sync.
    """
    if ok.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)
