"""Loading foreign checkpoints (Hugging Face BERT, ViT) onto transformer_ref modules by renaming keys."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn


def load_converted_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                              rename: Callable[[str], str | None], source: str,
                              strict: bool = True) -> tuple[list[str], list[str]]:
    """Load a foreign state dict whose keys ``rename`` maps to ``model``'s (None = no counterpart).

    Checks every shape and, when ``strict``, that every parameter of ``model`` is covered and every
    entry of ``state_dict`` is used; the ValueError lists the missing and unexpected names.
    Values are copied to the model's own device and dtype. Returns (missing, unexpected).
    """
    ours = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        new_key = rename(key)
        if new_key is None or new_key not in ours:
            unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(ours[new_key].shape):
            raise ValueError(f"{source}[{key!r}] has shape {tuple(value.shape)} but {type(model).__name__}."
                             f"{new_key} has shape {tuple(ours[new_key].shape)}; do the configurations match?")
        converted[new_key] = value
    missing = [k for k in ours if k not in converted]
    if strict and (missing or unexpected):
        raise ValueError(f"{source} does not match {type(model).__name__}:\n"
                         f"  missing (ours, not loaded): {missing}\n"
                         f"  unexpected (theirs, no counterpart): {unexpected}\n"
                         f"pass strict=False to load the matching part only")
    model.load_state_dict(converted, strict=False)
    return missing, unexpected
