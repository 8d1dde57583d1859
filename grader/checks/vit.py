"""Checks for assignment 09_vit: patchify, unpatchify, PatchEmbedding.

Each graded item below has, in this order: the cases it is called on (every case in a group a student
can read), its known mistakes (one small function or class each, next to what the student is told), the
Item that ties them to the reference and the shortcuts it may not call, and its check_<item> function for
the notebook. unpatchify is not in transformer_ref; its reference is `_unpatchify` below.
"""

from __future__ import annotations

import torch
from torch import nn

from grader.checks.cases import Case, randn
from grader.checks.item import Item, Mistake, Reference
from grader.checks.report import assert_passes

ASSIGNMENT = "09_vit"

# ---------------------------------------------------------------- forbidden shortcuts

VIT_SHORTCUTS = ("transformer_ref.vit.patchify", "transformer_ref.vit.PatchEmbedding.forward",
                 "transformer_ref.vit.VisionTransformer.forward",
                 "transformers.models.vit.modeling_vit.ViTEmbeddings.forward",
                 "transformers.models.vit.modeling_vit.ViTPatchEmbeddings.forward")


def _grid(images: torch.Tensor, P: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/P, P, W/P, P): the image cut into a grid of P x P squares."""
    B, C, H, W = images.shape
    return images.reshape(B, C, H // P, P, W // P, P)


def _flatten(x: torch.Tensor) -> torch.Tensor:
    """(B, a, b, c, d, e) -> (B, a*b, c*d*e): the first two axes index the patch, the other three its values."""
    return x.reshape(x.size(0), x.size(1) * x.size(2), -1)


def _patches(images: torch.Tensor, P: int) -> torch.Tensor:
    """patchify, for the mistakes below (which must not call the forbidden transformer_ref.vit.patchify)."""
    return _flatten(_grid(images, P).permute(0, 2, 4, 1, 3, 5))   # (B, N, C*P*P)


# ---------------------------------------------------------------- patchify

def _patchify_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [Case("images (2, 3, 8, 8), patch 4", (randn(g, 2, 3, 8, 8), 4), group="square images"),
            Case("images (1, 1, 2, 2), patch 2 (one patch)", (randn(g, 1, 1, 2, 2), 2), group="square images"),
            Case("images (2, 2, 6, 9), patch 3 (not square)", (randn(g, 2, 2, 6, 9), 3), group="non-square images"),
            Case("images (1, 3, 4, 4), patch 1", (randn(g, 1, 3, 4, 4), 1), group="square images"),
            Case("float64, images (3, 2, 4, 8), patch 2", (randn(g, 3, 2, 4, 8, dtype=torch.float64), 2),
                 group="float64")]


def _pf_channels_last(images, patch_size):
    return _flatten(_grid(images, patch_size).permute(0, 2, 4, 3, 5, 1))   # each patch (P, P, C)


def _pf_column_order(images, patch_size):
    return _flatten(_grid(images, patch_size).permute(0, 4, 2, 1, 3, 5))   # patches column by column


def _pf_no_permute(images, patch_size):
    B, C, H, W = images.shape
    return images.reshape(B, (H // patch_size) * (W // patch_size), C * patch_size ** 2)


def _pf_patch_transposed(images, patch_size):
    return _flatten(_grid(images, patch_size).permute(0, 2, 4, 1, 5, 3))   # each square (C, P_w, P_h)


PATCHIFY = Item(
    "patchify", ASSIGNMENT, "function", _patchify_cases, Reference("vit", "patchify"), VIT_SHORTCUTS,
    outputs=("patches",),
    mistakes=(
        Mistake("channels_last", "each patch is flattened in (P, P, C) order; flatten it in (C, P, P) order (all of "
                "channel 0, then channel 1, ...), the layout of a Conv2d weight.", _pf_channels_last),
        Mistake("column_order", "your patches go column by column; order them row by row (left to right, then top "
                "to bottom).", _pf_column_order),
        Mistake("no_permute", "you reshaped the image straight to (B, N, C*P*P); a patch is a P x P square, so "
                "split H and W into (H/P, P) and (W/P, P) and permute before flattening.", _pf_no_permute),
        Mistake("patch_transposed", "each patch is transposed (flattened column by column); flatten each channel's "
                "P x P square row by row.", _pf_patch_transposed),
    ),
    hints=("Cut each image into non-overlapping P x P squares, row by row of the patch grid, and flatten each square "
           "(all its channels) into one vector: (B, C, H, W) becomes (B, N, C*P*P).",
           "reshape to (B, C, H/P, P, W/P, P); permute so that the two grid axes come right after B and each patch's "
           "(C, P, P) are the last three axes; reshape to (B, N, C*P*P)."))


def check_patchify(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of patchify(images, patch_size) against transformer_ref.vit.patchify on random images
    (square and non-square, one patch, patch size 1, float64; CUDA copies when cuda=True and a GPU is present);
    raise CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(PATCHIFY, impl, seeds, cuda)


# ---------------------------------------------------------------- unpatchify

def _unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """The reference, the inverse of transformer_ref.vit.patchify: (B, N, C*P*P) -> (B, C, H, W)."""
    B, N, D = patches.shape
    P = patch_size
    C = D // (P * P)
    x = patches.reshape(B, height // P, width // P, C, P, P)  # (B, H/P, W/P, C, P, P)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(B, C, height, width)


def _unpatchify_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [Case("patches (2, 4, 48): 3 channels, patch 4, 8 x 8", (randn(g, 2, 4, 48), 4, 8, 8),
                 group="square images"),
            Case("patches (1, 1, 4): 1 channel, patch 2, 2 x 2", (randn(g, 1, 1, 4), 2, 2, 2), group="square images"),
            Case("patches (2, 6, 18): 2 channels, patch 3, 6 x 9", (randn(g, 2, 6, 18), 3, 6, 9),
                 group="non-square images"),
            Case("float64, patches (3, 8, 8): 2 channels, patch 2, 4 x 8",
                 (randn(g, 3, 8, 8, dtype=torch.float64), 2, 4, 8), group="float64")]


def _upf_channels_last(patches, patch_size, height, width):
    B, N, D = patches.shape
    P = patch_size
    x = patches.reshape(B, height // P, width // P, P, P, D // (P * P))   # each patch read as (P, P, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, -1, height, width)


def _upf_column_order(patches, patch_size, height, width):
    B, N, D = patches.shape
    P = patch_size
    x = patches.reshape(B, width // P, height // P, D // (P * P), P, P)   # patches placed column by column
    return x.permute(0, 3, 2, 4, 1, 5).reshape(B, -1, height, width)


def _upf_no_permute(patches, patch_size, height, width):
    B, N, D = patches.shape
    return patches.reshape(B, D // (patch_size ** 2), height, width)


UNPATCHIFY = Item(
    "unpatchify", ASSIGNMENT, "function", _unpatchify_cases, lambda: _unpatchify, VIT_SHORTCUTS, outputs=("images",),
    mistakes=(
        Mistake("channels_last", "you read each patch as (P, P, C); patchify flattens in (C, P, P) order.",
                _upf_channels_last),
        Mistake("column_order", "you placed the patches column by column; they come row by row.", _upf_column_order),
        Mistake("no_permute", "you reshaped (B, N, C*P*P) straight to (B, C, H, W); put each P x P square back in "
                "place (reshape to (B, H/P, W/P, C, P, P) and permute).", _upf_no_permute),
    ),
    hints=("The inverse of patchify: unflatten each patch vector into (C, P, P), put the patches back on their (H/P, "
           "W/P) grid and merge the grid axes with the pixel axes.",
           "reshape to (B, H/P, W/P, C, P, P); permute to (B, C, H/P, P, W/P, P), the inverse of patchify's "
           "permutation; reshape to (B, C, height, width)."))


def check_unpatchify(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of unpatchify(patches, patch_size, height, width), the inverse of patchify, on random
    patches (square and non-square images, one patch, float64; CUDA copies when cuda=True and a GPU is present);
    raise CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(UNPATCHIFY, impl, seeds, cuda)


# ---------------------------------------------------------------- PatchEmbedding

def _patch_embedding_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, B: int, C: int, size: int | tuple, P: int, d: int, group: str,
             dtype: torch.dtype = torch.float32) -> Case:
        H, W = (size, size) if isinstance(size, int) else size
        N = (H // P) * (W // P)
        state = {"proj.weight": randn(g, d, C * P * P, dtype=dtype, scale=(C * P * P) ** -0.5),
                 "proj.bias": randn(g, d, dtype=dtype, scale=0.1), "cls_token": randn(g, 1, 1, d, dtype=dtype),
                 "pos_embedding": randn(g, 1, N + 1, d, dtype=dtype)}
        return Case(label, (randn(g, B, C, H, W, dtype=dtype),), {},
                    {"image_size": size, "patch_size": P, "in_channels": C, "d_model": d}, state, group=group)
    return [case("images (2, 3, 8, 8), patch 4, d_model 6", 2, 3, 8, 4, 6, "square images"),
            case("batch 1, images (1, 1, 4, 4), patch 2, d_model 5", 1, 1, 4, 2, 5, "square images"),
            case("image_size (6, 9), patch 3, 2 channels", 2, 2, (6, 9), 3, 4, "non-square images"),
            case("float64, images (3, 2, 4, 4), patch 2", 3, 2, 4, 2, 8, "float64", torch.float64)]


class _PatchEmbeddingMistake(nn.Module):
    """The members of PatchEmbedding; each subclass assembles the sequence wrongly in its forward."""

    def __init__(self, image_size, patch_size, in_channels, d_model):
        super().__init__()
        H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.patch_size = patch_size
        self.proj = nn.Linear(in_channels * patch_size ** 2, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embedding = nn.Parameter(torch.zeros(1, (H // patch_size) * (W // patch_size) + 1, d_model))

    def cls(self, batch_size):
        return self.cls_token.expand(batch_size, -1, -1)   # (B, 1, d_model)


class _PatchEmbeddingClsLast(_PatchEmbeddingMistake):
    def forward(self, images):
        x = self.proj(_patches(images, self.patch_size))
        return torch.cat([x, self.cls(x.size(0))], dim=1) + self.pos_embedding


class _PatchEmbeddingClsNoPosition(_PatchEmbeddingMistake):
    def forward(self, images):
        x = self.proj(_patches(images, self.patch_size))
        return torch.cat([self.cls(x.size(0)), x + self.pos_embedding[:, 1:]], dim=1)


class _PatchEmbeddingNoPosition(_PatchEmbeddingMistake):
    def forward(self, images):
        x = self.proj(_patches(images, self.patch_size))
        return torch.cat([self.cls(x.size(0)), x], dim=1)


class _PatchEmbeddingChannelsLast(_PatchEmbeddingMistake):
    def forward(self, images):
        x = self.proj(_pf_channels_last(images, self.patch_size))
        return torch.cat([self.cls(x.size(0)), x], dim=1) + self.pos_embedding


PATCH_EMBEDDING = Item(
    "PatchEmbedding", ASSIGNMENT, "class", _patch_embedding_cases, Reference("vit", "PatchEmbedding"), VIT_SHORTCUTS,
    outputs=("embeddings",),
    members="proj = nn.Linear(C*P*P, d_model), cls_token (1, 1, d_model) and pos_embedding (1, N+1, d_model)",
    mistakes=(
        Mistake("cls_last", "the class token is appended at the end; it comes first: [x_class; x_p^1 E; ...].",
                _PatchEmbeddingClsLast),
        Mistake("cls_no_position", "the class token gets no position embedding; add pos_embedding to the whole "
                "sequence (N + 1 rows, class token included).", _PatchEmbeddingClsNoPosition),
        Mistake("no_position", "the position embeddings are missing.", _PatchEmbeddingNoPosition),
        Mistake("channels_last", "the patches are flattened in (P, P, C) order; use (C, P, P) as in patchify.",
                _PatchEmbeddingChannelsLast),
    ),
    builds_on=(PATCHIFY,),
    hints=("ViT's input: each patch is projected linearly to d_model, a learned [CLS] vector goes in front, and a "
           "learned position embedding (one per patch, plus one for CLS) is added.",
           "proj is an nn.Linear from C*P*P to d_model, applied to patchify's output; cls_token a parameter (1, 1, "
           "d_model) expanded to the batch and concatenated before the patches on dim 1; pos_embedding a parameter (1,"
           " N + 1, d_model), added last."))


def check_PatchEmbedding(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of the class PatchEmbedding(image_size, patch_size, in_channels, d_model),
    forward(images), against transformer_ref.vit.PatchEmbedding: proj, cls_token and pos_embedding get random
    values, and it runs on square and non-square images and in float64 (CUDA copies when cuda=True and a GPU is
    present); raise CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(PATCH_EMBEDDING, impl, seeds, cuda)


ITEMS = (PATCHIFY, UNPATCHIFY, PATCH_EMBEDDING)
