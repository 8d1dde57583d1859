"""The checks of assignment 09_vit (grader/checks/vit.py): each catalogued mistake fails with its diagnostic,
valid alternatives written the way a student might pass (unfold, loops, einsum, a strided convolution),
calling the shortcut scores 0, and grade() gives partial credit per group."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grader.checks import vit
from transformer_ref import vit as ref_vit

import checks_contract as contract

ITEMS = vit.ITEMS
CHECKS = {vit.PATCHIFY: vit.check_patchify, vit.UNPATCHIFY: vit.check_unpatchify,
          vit.PATCH_EMBEDDING: vit.check_PatchEmbedding}

# ---------------------------------------------------------------- valid alternatives


def patchify_unfold(images, patch_size):
    return F.unfold(images, kernel_size=patch_size, stride=patch_size).transpose(1, 2)


def patchify_loops(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    return torch.stack([images[:, :, r:r + P, c:c + P].reshape(B, -1)
                        for r in range(0, H, P) for c in range(0, W, P)], dim=1)


def patchify_unfold_tensor(images, patch_size):
    B, C = images.shape[:2]
    x = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)  # (B, C, H/P, W/P, P, P)
    return x.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, C * patch_size ** 2)


def unpatchify_fold(patches, patch_size, height, width):
    return F.fold(patches.transpose(1, 2), (height, width), kernel_size=patch_size, stride=patch_size)


def unpatchify_loops(patches, patch_size, height, width):
    B, N, D = patches.shape
    P = patch_size
    C = D // (P * P)
    out = patches.new_empty(B, C, height, width)
    n = 0
    for r in range(0, height, P):
        for c in range(0, width, P):
            out[:, :, r:r + P, c:c + P] = patches[:, n].reshape(B, C, P, P)
            n += 1
    return out


def unpatchify_einsum(patches, patch_size, height, width):
    B, N, D = patches.shape
    P = patch_size
    x = patches.reshape(B, height // P, width // P, D // (P * P), P, P)
    return torch.einsum("bhwcpq->bchpwq", x).reshape(B, -1, height, width)


class PatchEmbeddingBase(nn.Module):
    """The members; subclasses embed the patches in different ways."""

    def __init__(self, image_size, patch_size, in_channels, d_model):
        super().__init__()
        H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.P = patch_size
        self.proj = nn.Linear(in_channels * patch_size ** 2, d_model)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d_model))
        self.pos_embedding = nn.Parameter(torch.randn(1, H * W // patch_size ** 2 + 1, d_model))

    def forward(self, images):
        x = self.embed_patches(images)
        return torch.cat([self.cls_token.expand(len(x), 1, -1), x], 1) + self.pos_embedding


class PatchEmbeddingLinear(PatchEmbeddingBase):
    def embed_patches(self, images):
        return self.proj(patchify_unfold(images, self.P))


class PatchEmbeddingConv(PatchEmbeddingBase):
    def embed_patches(self, images):
        weight = self.proj.weight.view(-1, images.size(1), self.P, self.P)
        return F.conv2d(images, weight, self.proj.bias, stride=self.P).flatten(2).transpose(1, 2)


class PatchEmbeddingLoops(PatchEmbeddingBase):
    def embed_patches(self, images):
        return self.proj(patchify_loops(images, self.P))


ALTERNATIVES = {
    vit.PATCHIFY: [patchify_unfold, patchify_loops, patchify_unfold_tensor],
    vit.UNPATCHIFY: [unpatchify_fold, unpatchify_loops, unpatchify_einsum],
    vit.PATCH_EMBEDDING: [PatchEmbeddingLinear, PatchEmbeddingConv, PatchEmbeddingLoops],
}

# ---------------------------------------------------------------- shortcuts


def patchify_package(images, patch_size):
    return ref_vit.patchify(images, patch_size)


def unpatchify_through_patchify(patches, patch_size, height, width):
    """Inverts patchify by calling it on an index image: still the package's patchify."""
    B, N, D = patches.shape
    C = D // patch_size ** 2
    index = torch.arange(C * height * width, device=patches.device).reshape(1, C, height, width)
    order = ref_vit.patchify(index.float(), patch_size).long().flatten()
    return patches.flatten(1)[:, order.argsort()].reshape(B, C, height, width)


class PatchEmbeddingPackage(ref_vit.PatchEmbedding):
    pass


SHORTCUTS = [(vit.PATCHIFY, patchify_package, "transformer_ref.vit.patchify"),
             (vit.UNPATCHIFY, unpatchify_through_patchify, "transformer_ref.vit.patchify"),
             (vit.PATCH_EMBEDDING, PatchEmbeddingPackage, "transformer_ref.vit.PatchEmbedding")]

# ---------------------------------------------------------------- the contract (tests/checks_contract.py)


def test_the_assignment_has_its_items_groups_mistakes_and_alternatives():
    contract.assert_assignment_shape(vit, "09_vit", ["patchify", "unpatchify", "PatchEmbedding"], ALTERNATIVES, CHECKS)


@pytest.mark.parametrize("seed", (0, 1))
@pytest.mark.parametrize("item", ITEMS, ids=contract.item_id)
def test_the_reference_passes_and_scores_full_marks(item, seed):
    contract.assert_reference_scores_full_marks(item, seed)


@pytest.mark.parametrize("item,mistake", contract.mistake_params(ITEMS))
def test_mistake_fails_with_its_diagnostic(item, mistake):
    contract.assert_mistake_named(item, mistake, CHECKS[item])


@pytest.mark.parametrize("item,impl", contract.alternative_params(ALTERNATIVES))
def test_valid_alternative_passes_and_scores_full_marks(item, impl):
    contract.assert_alternative_passes(item, impl, CHECKS[item])


@pytest.mark.parametrize("item,impl,dotted", contract.shortcut_params(SHORTCUTS))
def test_shortcut_fails_with_the_shortcut_message_and_scores_0(item, impl, dotted):
    contract.assert_shortcut_scores_zero(item, impl, dotted)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("item", ITEMS, ids=contract.item_id)
def test_cuda_copies_pass_for_an_alternative(item):
    contract.assert_cuda_copies_pass(item, ALTERNATIVES[item][0])


# ---------------------------------------------------------------- assignment-specific tests


def test_the_unpatchify_reference_inverts_patchify():
    images = torch.randn(2, 3, 6, 9)
    assert torch.equal(vit._unpatchify(ref_vit.patchify(images, 3), 3, 6, 9), images)


def test_grade_a_patchify_for_square_images_only_passes_the_square_group():
    def square_only(images, patch_size):
        B, C, H, _ = images.shape
        P = patch_size
        x = images.reshape(B, C, H // P, P, H // P, P).permute(0, 2, 4, 1, 3, 5)  # uses H for W too
        return x.reshape(B, (H // P) ** 2, C * P * P)
    result = contract.graded(vit.PATCHIFY, square_only)
    assert {g.group: g.passed for g in result.groups} == {
        "square images": True, "non-square images": False, "float64": False}
    assert result.fraction == pytest.approx(1 / 3)
    assert result.message.startswith("patchify: right on square images; wrong on non-square images and float64.")
    assert "patchify does not run yet" in result.message or "patchify is not right yet" in result.message


def test_grade_an_embedding_that_drops_to_float32_fails_only_float64():
    class Float32Only(PatchEmbeddingLinear):
        def forward(self, images):
            return super().forward(images).float()
    result = contract.graded(vit.PATCH_EMBEDDING, Float32Only)
    assert [g.group for g in result.groups if not g.passed] == ["float64"]
    assert result.fraction == pytest.approx(2 / 3) and "expected dtype torch.float64" in result.message
