"""transformer_ref.vit against Hugging Face transformers' ViT (tiny random configs, nothing downloaded),
an independent patch loop, and the usual strided convolution.

timm's VisionTransformer is not tested: timm needs torchvision, which does not install beside torch 2.13 here."""

import re

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from transformer_ref.vit import PatchEmbedding, VisionTransformer, load_hf_vit, patchify

IMAGE, PATCH, CHANNELS, D_MODEL, LAYERS, HEADS, D_FF, CLASSES = 12, 4, 3, 24, 2, 3, 37, 5
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=2e-5)}
# Hugging Face's eager ViT attention computes its softmax in float32 even for float64 inputs
# (softmax(..., dtype=torch.float32)), so against it float64 agrees only to float32 rounding.
# The SDPA test below checks float64 to 1e-10.
TOL_HF_EAGER = {torch.float64: dict(atol=1e-6, rtol=1e-6), torch.float32: TOL[torch.float32]}


def random_hf(cls, seed: int = 0, attn_implementation: str = "eager"):
    """A Hugging Face ViT in eval mode with every parameter (LayerNorms too) random."""
    torch.manual_seed(seed)
    config = transformers.ViTConfig(image_size=IMAGE, patch_size=PATCH, num_channels=CHANNELS, hidden_size=D_MODEL,
                                    num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=D_FF,
                                    num_labels=CLASSES, hidden_act="gelu",
                                    attn_implementation=attn_implementation)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def ours_like_hf() -> VisionTransformer:
    return VisionTransformer(IMAGE, PATCH, CHANNELS, CLASSES, D_MODEL, LAYERS, HEADS, D_FF, layer_norm_eps=1e-12)


def images(device, dtype=torch.float32, B=2, C=CHANNELS, H=IMAGE, W=IMAGE, seed=0):
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


# --- patchify and the patch embedding --------------------------------------------------------------

@pytest.mark.parametrize("shape, P", [((2, 3, 8, 12), 4), ((1, 1, 6, 6), 3), ((3, 2, 5, 5), 5), ((1, 3, 4, 4), 1)])
def test_patchify_matches_a_loop(device, shape, P):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    B, C, H, W = shape
    expected = torch.stack([
        torch.stack([x[b, :, i * P:(i + 1) * P, j * P:(j + 1) * P].reshape(-1)        # (C, P, P) order
                     for i in range(H // P) for j in range(W // P)])                   # row by row
        for b in range(B)])
    got = patchify(x, P)
    assert got.shape == (B, (H // P) * (W // P), C * P * P)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_patchify_gradcheck():
    x = torch.randn(2, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: patchify(t, 2), (x,))


def test_patch_embedding_equals_strided_conv(device):
    torch.manual_seed(0)
    H, W = 8, 12
    embed = PatchEmbedding((H, W), PATCH, CHANNELS, D_MODEL).to(device)
    conv = nn.Conv2d(CHANNELS, D_MODEL, kernel_size=PATCH, stride=PATCH).to(device)
    with torch.no_grad():
        conv.weight.copy_(embed.proj.weight.view(D_MODEL, CHANNELS, PATCH, PATCH))
        conv.bias.copy_(embed.proj.bias)
    x = images(device, H=H, W=W)
    z = embed(x)
    assert z.shape == (2, embed.num_patches + 1, D_MODEL) and embed.num_patches == 6
    expected_patches = conv(x).flatten(2).transpose(1, 2)                             # (B, N, d_model)
    torch.testing.assert_close(z[:, 1:] - embed.pos_embedding[:, 1:], expected_patches)
    torch.testing.assert_close(z[:, 0], (embed.cls_token + embed.pos_embedding[:, 0]).expand(2, 1, -1)[:, 0])
    assert embed.cls_token.shape == (1, 1, D_MODEL) and embed.pos_embedding.shape == (1, 7, D_MODEL)


# --- parity with Hugging Face ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vit_classifier_matches_hugging_face(device, dtype):
    hf = random_hf(transformers.ViTForImageClassification).to(device, dtype)
    ours = ours_like_hf()
    assert load_hf_vit(ours, hf.state_dict()) == ([], [])
    ours = ours.to(device, dtype).eval()
    x = images(device, dtype)
    with torch.no_grad():
        expected = hf(x, output_attentions=True)
        logits, weights = ours(x, need_weights=True)
        plain_logits = ours(x)
    torch.testing.assert_close(logits, expected.logits, **TOL_HF_EAGER[dtype])
    torch.testing.assert_close(plain_logits, logits, **TOL[dtype])
    assert len(weights) == LAYERS
    for ours_w, hf_w in zip(weights, expected.attentions):
        assert ours_w.shape == (2, HEADS, 10, 10)
        torch.testing.assert_close(ours_w, hf_w, **TOL_HF_EAGER[dtype])


def test_vit_matches_hugging_face_sdpa_in_float64(device):
    hf = random_hf(transformers.ViTForImageClassification, attn_implementation="sdpa").to(device, torch.float64)
    ours = ours_like_hf()
    load_hf_vit(ours, hf.state_dict())
    ours = ours.to(device, torch.float64).eval()
    x = images(device, torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, **TOL[torch.float64])


def test_vit_backbone_matches_hugging_face_vit_model(device):
    hf = random_hf(transformers.ViTModel).to(device, torch.float64)
    ours = ours_like_hf()
    head_before = ours.head.weight.detach().clone()
    missing, unexpected = load_hf_vit(ours, hf.state_dict(), strict=False)
    assert missing == ["head.weight", "head.bias"] and unexpected == []
    assert torch.equal(ours.head.weight, head_before)                                 # the head is left alone
    ours = ours.to(device, torch.float64).eval()
    x = images(device, torch.float64)
    with torch.no_grad():
        expected = hf(x).last_hidden_state
        got = ours.forward_features(x)
    torch.testing.assert_close(got, expected, **TOL_HF_EAGER[torch.float64])


def to_transformers_4_names(state_dict: dict) -> dict:
    """Rename a transformers 5.x ViT state dict to the 4.x checkpoint layout (written independently of
    load_hf_vit's table, from the 4.x module tree: encoder.layer.N.attention.attention.query, ...)."""
    renames = [(r"\.layers\.(\d+)\.", r".encoder.layer.\1."), (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
               (r"attention\.q_proj", "attention.attention.query"), (r"attention\.k_proj", "attention.attention.key"),
               (r"attention\.v_proj", "attention.attention.value"), (r"attention\.o_proj", "attention.output.dense"),
               (r"mlp\.fc1", "intermediate.dense"), (r"mlp\.fc2", "output.dense")]
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def test_vit_loads_transformers_4_checkpoint_names():
    hf = random_hf(transformers.ViTForImageClassification).double()
    state = hf.state_dict()
    legacy = to_transformers_4_names(state)
    if legacy == dict(state):
        pytest.skip("installed transformers already uses the 4.x names")
    assert "vit.encoder.layer.1.attention.attention.query.weight" in legacy
    ours = ours_like_hf().double().eval()
    load_hf_vit(ours, legacy)
    x = images("cpu", torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, **TOL_HF_EAGER[torch.float64])


def test_load_hf_vit_errors():
    hf = random_hf(transformers.ViTModel)
    with pytest.raises(ValueError, match=r"(?s)missing.*'head\.weight', 'head\.bias'.*unexpected.*\[\]"):
        load_hf_vit(ours_like_hf(), hf.state_dict())
    wrong_width = VisionTransformer(IMAGE, PATCH, CHANNELS, CLASSES, D_MODEL, LAYERS, HEADS, D_FF + 1)
    with pytest.raises(ValueError, match=r"has shape \(37, 24\) but VisionTransformer\."
                                         r"encoder\.layers\.0\.feed_forward\.linear1\.weight has shape \(38, 24\)"):
        load_hf_vit(wrong_width, hf.state_dict())
    state = dict(hf.state_dict(), **{"embeddings.mask_token": torch.zeros(1, 1, D_MODEL)})
    with pytest.raises(ValueError, match=r"unexpected.*embeddings\.mask_token"):
        load_hf_vit(ours_like_hf(), state, strict=True)


def test_vit_trains_on_one_batch():
    """A few Adam steps on one fixed batch (class = brightest quadrant) lower the loss clearly."""
    torch.manual_seed(0)
    model = VisionTransformer(8, 4, 1, 4, d_model=32, num_layers=1, num_heads=4, d_ff=64)
    x = torch.randn(32, 1, 8, 8)
    y = x.unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2)).flatten(1).argmax(1)        # (B,) in [0, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


# --- bad input -----------------------------------------------------------------------------------------

def test_bad_input_messages(device):
    model = ours_like_hf().to(device)
    with pytest.raises(ValueError, match=r"images must have shape \(B, C, H, W\) = \(B, 3, 12, 12\); "
                                         r"got \(2, 1, 12, 12\)"):
        model(images(device, C=1))
    with pytest.raises(ValueError, match=r"images must have shape \(B, C, H, W\) = \(B, 3, 12, 12\); "
                                         r"got \(2, 3, 16, 16\)"):
        model(images(device, H=16, W=16))
    with pytest.raises(ValueError, match=r"images must have shape \(B, C, H, W\) \(4-D\); got shape \(3, 12, 12\)"):
        model(images(device)[0])
    with pytest.raises(TypeError, match="images must be a floating-point tensor; got torch.uint8"):
        model(images(device).to(torch.uint8))
    with pytest.raises(ValueError, match=r"divisible by patch_size = 5; got H = 12, W = 12"):
        patchify(images(device), 5)
    with pytest.raises(ValueError, match=r"image_size \(12, 10\) must be divisible by patch_size = 4"):
        PatchEmbedding((12, 10), 4, CHANNELS, D_MODEL)
    with pytest.raises(ValueError, match="patch_size must be a positive int; got 0"):
        patchify(images(device), 0)
