"""Vision Transformer (Dosovitskiy et al. 2021): patches, patch embedding with a class token and learned
position embeddings, a pre-LN encoder, a classification head, and loading of Hugging Face checkpoints.

    from transformer_ref.vit import patchify, PatchEmbedding, VisionTransformer, load_hf_vit

Images are (B, C, H, W) float tensors. Every patch attends to every patch (no mask).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from transformer_ref._checks import check_floating, check_ndim, check_positive_int
from transformer_ref._convert import load_converted_state_dict
from transformer_ref.model import Encoder

__all__ = ["patchify", "PatchEmbedding", "VisionTransformer", "load_hf_vit"]


def _check_patchify(images: torch.Tensor, patch_size: int) -> None:
    check_ndim(images, "images", 4, "(B, C, H, W)")
    P = check_positive_int(patch_size, "patch_size")
    H, W = images.shape[-2:]
    if H % P or W % P:
        raise ValueError(f"images height and width must be divisible by patch_size = {P}; "
                         f"got H = {H}, W = {W} (shape {tuple(images.shape)})")


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping P x P patches and flatten each (Dosovitskiy et al. 2021, eq. 1: x_p^i).

    images: (B, C, H, W), H and W divisible by P = patch_size.
    Returns (B, N, C*P*P) with N = (H/P) (W/P): patches row by row (left to right, then top to bottom),
    each flattened in (C, P, P) order, i.e. the layout of a ``nn.Conv2d(C, d, P, stride=P)`` weight.
    """
    _check_patchify(images, patch_size)  # arguments checked here
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P)          # (B, C, H/P, P, W/P, P)
    x = x.permute(0, 2, 4, 1, 3, 5)                          # (B, H/P, W/P, C, P, P)
    return x.reshape(B, (H // P) * (W // P), C * P * P)     # (B, N, C*P*P)


class PatchEmbedding(nn.Module):
    """z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos  (Dosovitskiy et al. 2021, eq. 1).

    ``proj`` (nn.Linear, C*P*P -> d_model, with bias) applied to ``patchify`` output equals the usual
    strided ``nn.Conv2d(C, d_model, P, stride=P)`` with weight ``proj.weight.view(d_model, C, P, P)``.
    Members: proj, cls_token (1, 1, d_model), pos_embedding (1, N+1, d_model).
    image_size: int or (H, W).  forward(images (B, C, H, W)) -> (B, N+1, d_model), class token first.
    """

    def __init__(self, image_size: int | tuple[int, int], patch_size: int, in_channels: int, d_model: int):
        super().__init__()
        H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.image_size = (check_positive_int(H, "image_size"), check_positive_int(W, "image_size"))
        self.patch_size = check_positive_int(patch_size, "patch_size")
        self.in_channels = check_positive_int(in_channels, "in_channels")
        if H % patch_size or W % patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size = {patch_size}")
        self.num_patches = (H // patch_size) * (W // patch_size)
        self.proj = nn.Linear(in_channels * patch_size * patch_size, check_positive_int(d_model, "d_model"))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embedding = nn.Parameter(torch.zeros(1, self.num_patches + 1, d_model))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.in_channels, self.image_size)  # arguments checked here
        x = self.proj(patchify(images, self.patch_size))                             # (B, N, d_model)
        cls = self.cls_token.expand(x.size(0), -1, -1)                                # (B, 1, d_model)
        return torch.cat([cls, x], dim=1) + self.pos_embedding                        # (B, N+1, d_model)


def _check_images(images: torch.Tensor, in_channels: int, image_size: tuple[int, int]) -> None:
    """images: floating (B, C, H, W) with (C, H, W) = (in_channels, *image_size)."""
    check_ndim(images, "images", 4, "(B, C, H, W)")
    check_floating(images, "images")
    expected = (in_channels, *image_size)
    if tuple(images.shape[1:]) != expected:
        raise ValueError(f"images must have shape (B, C, H, W) = (B, {', '.join(map(str, expected))}); "
                         f"got {tuple(images.shape)}")


class VisionTransformer(nn.Module):
    """ViT classifier: ``PatchEmbedding`` -> dropout -> pre-LN GELU encoder -> final LayerNorm ->
    linear head on the class token (Dosovitskiy et al. 2021, eqs. 1-4; one linear layer as for fine-tuning).

    forward(images (B, C, H, W), need_weights=False) -> logits (B, num_classes), or
    (logits, [attention weights (B, H, N+1, N+1) per layer]) when need_weights (row 0 of each is the
    class token's attention over [class token, patches]).
    """

    def __init__(self, image_size: int | tuple[int, int], patch_size: int, in_channels: int, num_classes: int,
                 d_model: int, num_layers: int, num_heads: int, d_ff: int, dropout: float = 0.0,
                 layer_norm_eps: float = 1e-12):
        super().__init__()
        self.patch_embed = PatchEmbedding(image_size, patch_size, in_channels, d_model)
        self.dropout = nn.Dropout(dropout)
        self.encoder = Encoder(num_layers, d_model, num_heads, d_ff, dropout=dropout, activation="gelu",
                               norm_first=True, layer_norm_eps=layer_norm_eps)
        self.head = nn.Linear(d_model, check_positive_int(num_classes, "num_classes"))

    def forward_features(self, images: torch.Tensor, need_weights: bool = False
                         ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder's output after the final LayerNorm: (B, N+1, d_model) (class token first),
        or (that, [weights per layer]) when need_weights. Equals Hugging Face's ``ViTModel`` last_hidden_state.
        """
        x = self.dropout(self.patch_embed(images))                                    # (B, N+1, d_model)
        return self.encoder(x, need_weights=need_weights)

    def forward(self, images: torch.Tensor, need_weights: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if need_weights:
            x, weights = self.forward_features(images, need_weights=True)
            return self.head(x[:, 0]), weights                                        # (B, num_classes)
        return self.head(self.forward_features(images)[:, 0])                         # (B, num_classes)


# Hugging Face ViT names (without the "vit." prefix of ViTForImageClassification) -> ours.
# transformers >= 5 names first, then the names of checkpoints saved by transformers 4.x.
_HF_VIT_RULES = [
    (r"^embeddings\.cls_token$", "patch_embed.cls_token"),
    (r"^embeddings\.position_embeddings$", "patch_embed.pos_embedding"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.attention\.([qkvo])_proj\.", r"encoder.layers.\1.self_attn.W_\2."),
    (r"^layers\.(\d+)\.layernorm_before\.", r"encoder.layers.\1.norm1."),
    (r"^layers\.(\d+)\.layernorm_after\.", r"encoder.layers.\1.norm2."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layers.\1.feed_forward.linear1."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layers.\1.feed_forward.linear2."),
    (r"^layernorm\.", "encoder.norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"encoder.layers.\1.self_attn.W_q."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"encoder.layers.\1.self_attn.W_k."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"encoder.layers.\1.self_attn.W_v."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.\1.self_attn.W_o."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"encoder.layers.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"encoder.layers.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layers.\1.feed_forward.linear1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layers.\1.feed_forward.linear2."),
    (r"^classifier\.", "head."),
]
# ViTModel's pooler (tanh(dense(class token))) is not used by ViTForImageClassification, nor here.
_HF_VIT_SKIP = re.compile(r"^(vit\.)?pooler\.")


def load_hf_vit(model: VisionTransformer, hf_state_dict: Mapping[str, torch.Tensor],
                strict: bool = True) -> tuple[list[str], list[str]]:
    """Copy a Hugging Face ViT state dict into ``model``, in place.

    Sources: ``transformers.ViTForImageClassification`` (everything, the classifier becomes ``head``) or
    ``transformers.ViTModel`` (no classifier: load with ``strict=False``; ``head`` keeps its initialisation
    and is reported missing). Names of transformers 5.x and 4.x checkpoints are both understood; the
    unused pooler of ``ViTModel`` is skipped. The convolution weight (d, C, P, P) becomes ``proj.weight``
    (d, C*P*P), matching ``patchify``'s (C, P, P) order. The model needs the checkpoint's exact
    (exact-GELU, pre-LN) configuration; shapes are checked.

    Returns (missing, unexpected) names; with ``strict=True`` either being non-empty raises ValueError.
    """
    def rename(hf_key: str) -> str | None:
        key = hf_key.removeprefix("vit.")
        for pattern, replacement in _HF_VIT_RULES:
            if re.match(pattern, key):
                return re.sub(pattern, replacement, key)
        return None

    converted = {}
    for key, value in hf_state_dict.items():
        if _HF_VIT_SKIP.match(key):
            continue
        if rename(key) == "patch_embed.proj.weight" and value.dim() == 4:
            value = value.reshape(value.size(0), -1)                                  # (d, C, P, P) -> (d, C*P*P)
        converted[key] = value
    return load_converted_state_dict(model, converted, rename, "hf_state_dict (Hugging Face ViT)", strict)
