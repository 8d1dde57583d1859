"""Checks for assignment 06_add_norm: layer_norm, AddNorm, PositionwiseFeedForward.

Each graded item below has, in this order: the cases it is called on (every case in a group a student
can read: "basic shapes", "float64", ...), its known mistakes (one small function or class each, next to
what the student is told), the Item that ties them to the reference in transformer_ref and the
shortcuts it may not call, and its check_<item> function for the notebook.
"""

from __future__ import annotations

import torch
from torch import nn

from grader.checks.cases import Case, linear_state, randn
from grader.checks.item import Item, Mistake, Reference
from grader.checks.report import assert_passes
from grader.checks.shortcuts import ANY_COURSE_CODE
from grader.checks.wiring import explain_layer

ASSIGNMENT = "06_add_norm"

# ---------------------------------------------------------------- forbidden shortcuts

LAYER_NORM_SHORTCUTS = (
    "torch.nn.functional.layer_norm", "torch.layer_norm", "torch.native_layer_norm", "torch.nn.LayerNorm.forward",
    "torch.nn.functional.group_norm", "torch.nn.functional.batch_norm", "torch.nn.functional.instance_norm",
    "torch.nn.functional.rms_norm", "transformer_ref.layers.layer_norm", "transformer_ref.layers.LayerNorm.forward",
    ANY_COURSE_CODE)
LAYER_NORM_OPS = ("aten::layer_norm", "aten::native_layer_norm", "aten::group_norm", "aten::native_group_norm",
                  "aten::batch_norm", "aten::native_batch_norm", "aten::_native_batch_norm_legit*",
                  "aten::_batch_norm_*", "aten::cudnn_batch_norm", "aten::miopen_batch_norm", "aten::instance_norm",
                  "aten::rms_norm", "aten::_fused_rms_norm")
REF_SUBLAYERS = ("transformer_ref.layers.AddNorm.forward", "transformer_ref.layers.PreNormResidual.forward",
                 "transformer_ref.layers.PositionwiseFeedForward.forward")
REF_TRANSFORMER_LAYERS = ("transformer_ref.layers.EncoderLayer.forward", "transformer_ref.layers.DecoderLayer.forward")
TORCH_LAYERS = ("torch.nn.TransformerEncoderLayer.forward", "torch.nn.TransformerDecoderLayer.forward",
                "torch.nn.TransformerEncoder.forward", "torch.nn.TransformerDecoder.forward",
                "torch.nn.Transformer.forward")


def norm_state(g: torch.Generator, d_model: int, dtype: torch.dtype) -> dict:
    """Random parameters for a member `norm` (a LayerNorm with weight and bias of shape (d_model,))."""
    return {"norm.weight": 1 + randn(g, d_model, dtype=dtype, scale=0.3),
            "norm.bias": randn(g, d_model, dtype=dtype, scale=0.3)}


# ---------------------------------------------------------------- layer_norm

def _layer_norm_cases(g: torch.Generator, seed: int) -> list[Case]:
    def args(*shape: int, dtype: torch.dtype = torch.float32, spread: float = 2.0, shift: float = 3.0) -> tuple:
        d = shape[-1]
        return (randn(g, *shape, dtype=dtype, scale=spread) + shift, 1 + randn(g, d, dtype=dtype, scale=0.3),
                randn(g, d, dtype=dtype, scale=0.3))
    return [Case("x (2, 5, 6) with mean about 3", args(2, 5, 6), group="basic shapes"),
            Case("batch 1, x (1, 1, 7)", args(1, 1, 7), group="basic shapes"),
            Case("x (4, 3) without a sequence axis", args(4, 3), group="basic shapes"),
            Case("x (2, 3, 8) with a tiny spread (0.001) around 0: eps matters", args(2, 3, 8, spread=1e-3, shift=0.0),
                 group="a tiny variance and eps"),
            Case("x (3, 5), eps = 0.1", args(3, 5), {"eps": 0.1}, group="a tiny variance and eps"),
            Case("float64, x (2, 4, 5)", args(2, 4, 5, dtype=torch.float64), group="float64")]


def _ln_wrong_axis(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=-2, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-2, keepdim=True)
    return gamma * (x - mean) / (var + eps).sqrt() + beta


def _ln_unbiased(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).sum(dim=-1, keepdim=True) / (x.size(-1) - 1)
    return gamma * (x - mean) / (var + eps).sqrt() + beta


def _ln_eps_outside(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    std = ((x - mean) ** 2).mean(dim=-1, keepdim=True).sqrt()
    return gamma * (x - mean) / (std + eps) + beta


def _ln_no_mean(x, gamma, beta, eps=1e-5):
    return gamma * x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() + beta


def _ln_swapped(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return beta * (x - mean) / (var + eps).sqrt() + gamma


LAYER_NORM = Item(
    "layer_norm", ASSIGNMENT, "function", _layer_norm_cases, Reference("layers", "layer_norm"), LAYER_NORM_SHORTCUTS,
    outputs=("output",), forbidden_ops=LAYER_NORM_OPS,
    mistakes=(
        Mistake("wrong_axis", "you normalised over the wrong axis (dim=-2, across positions); LayerNorm normalises "
                "each position's features, over the last axis.", _ln_wrong_axis),
        Mistake("unbiased_variance", "you used the unbiased variance (divide by d_model - 1, torch.var's default); "
                "LayerNorm divides by d_model (unbiased=False).", _ln_unbiased),
        Mistake("eps_outside_sqrt", "eps is added outside the square root, (x - mean) / (std + eps); it belongs "
                "inside: / sqrt(var + eps).", _ln_eps_outside),
        Mistake("no_mean", "you did not subtract the mean (that is RMSNorm); LayerNorm centres each vector first.",
                _ln_no_mean),
        Mistake("gamma_beta_swapped", "gamma and beta are swapped: LN(x) = gamma * x_hat + beta.", _ln_swapped),
    ),
    hints=("Normalise each position's feature vector (the last axis) to mean 0 and variance 1, then scale by gamma and"
           " shift by beta; eps keeps the division safe.",
           "Take the mean and the biased variance over dim=-1 with keepdim=True so that they broadcast; subtract, "
           "divide by the square root of var + eps, then multiply by gamma and add beta. torch.var is unbiased unless "
           "you pass correction=0."))


def check_layer_norm(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of layer_norm(x, gamma, beta, eps=1e-5) against transformer_ref.layers.layer_norm on
    random inputs (several shapes, a tiny variance where eps matters, a custom eps, float64; CUDA copies when
    cuda=True and a GPU is present); raise CheckFailed with what was expected, what came back and the likely
    mistake."""
    assert_passes(LAYER_NORM, impl, seeds, cuda)


# ---------------------------------------------------------------- AddNorm

def _add_norm_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, B: int, T: int, d: int, group: str, dtype: torch.dtype = torch.float32,
             dropout: float = 0.0, train: bool = False) -> Case:
        return Case(label, (randn(g, B, T, d, dtype=dtype) + 1, randn(g, B, T, d, dtype=dtype, scale=2.0)), {},
                    {"d_model": d, "dropout": dropout}, norm_state(g, d, dtype), train, group=group)
    return [case("x, sublayer_out (2, 5, 6)", 2, 5, 6, "basic shapes"),
            case("batch 1, (1, 1, 5)", 1, 1, 5, "basic shapes"),
            case("float64, (3, 4, 7)", 3, 4, 7, "float64", torch.float64),
            case("dropout 0.3 in evaluation mode: no dropout", 2, 3, 6, "dropout in training and evaluation mode",
                 dropout=0.3),
            case("dropout 1.0 in training mode: the sublayer output is dropped entirely", 2, 3, 6,
                 "dropout in training and evaluation mode", dropout=1.0, train=True)]


class _AddNormMistake(nn.Module):
    """The members of AddNorm (norm, dropout); each subclass wires them wrongly in its forward."""

    def __init__(self, d_model, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)


class _AddNormSublayerOnly(_AddNormMistake):
    def forward(self, x, sublayer_out):
        return x + self.norm(self.dropout(sublayer_out))


class _AddNormNoResidual(_AddNormMistake):
    def forward(self, x, sublayer_out):
        return self.norm(self.dropout(sublayer_out))


class _AddNormXOnly(_AddNormMistake):
    def forward(self, x, sublayer_out):
        return self.norm(x) + self.dropout(sublayer_out)


class _AddNormDropoutOnSum(_AddNormMistake):
    def forward(self, x, sublayer_out):
        return self.norm(self.dropout(x + sublayer_out))


class _AddNormDropoutAfterNorm(_AddNormMistake):
    def forward(self, x, sublayer_out):
        return self.dropout(self.norm(x + sublayer_out))


class _AddNormNoDropout(_AddNormMistake):
    def forward(self, x, sublayer_out):
        return self.norm(x + sublayer_out)


ADD_NORM = Item(
    "AddNorm", ASSIGNMENT, "class", _add_norm_cases, Reference("layers", "AddNorm"),
    REF_SUBLAYERS + REF_TRANSFORMER_LAYERS + TORCH_LAYERS, outputs=("output",),
    members="norm (a LayerNorm with parameters weight and bias of shape (d_model,), eps 1e-5)",
    mistakes=(
        Mistake("norm_sublayer_only", "you normalised only the sublayer output, x + LN(sublayer_out); post-LN is "
                "LN(x + sublayer_out).", _AddNormSublayerOnly),
        Mistake("no_residual", "the residual connection is missing: LN(x + sublayer_out), not LN(sublayer_out).",
                _AddNormNoResidual),
        Mistake("norm_x_only", "you normalised x and added the sublayer output afterwards; post-LN is "
                "LN(x + sublayer_out).", _AddNormXOnly),
        Mistake("dropout_on_sum", "dropout is applied to the sum x + sublayer_out; it applies to the sublayer output "
                "only: LN(x + dropout(sublayer_out)).", _AddNormDropoutOnSum),
        Mistake("dropout_after_norm", "dropout is applied after the norm; it applies to the sublayer output, before "
                "the residual sum.", _AddNormDropoutAfterNorm),
        Mistake("no_dropout", "the dropout is missing (or not an nn.Dropout that follows train()/eval()): "
                "LN(x + dropout(sublayer_out)).", _AddNormNoDropout),
    ), explain=explain_layer,
    hints=("A post-LN residual block: add the sublayer's output to the block's input, then normalise; dropout applies "
           "to the sublayer's output before the addition.",
           "Members: an nn.LayerNorm(d_model) and an nn.Dropout(dropout). forward normalises x plus the dropped-out "
           "sublayer_out."))


def check_AddNorm(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of the class AddNorm(d_model, dropout=0.0), forward(x, sublayer_out), against
    transformer_ref.layers.AddNorm: its `norm` gets random weight and bias, and it runs on several shapes, float64,
    and with dropout in evaluation and training mode (CUDA copies when cuda=True and a GPU is present); raise
    CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(ADD_NORM, impl, seeds, cuda)


# ---------------------------------------------------------------- PositionwiseFeedForward

def _ffn_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, shape: tuple, d_ff: int, group: str, dtype: torch.dtype = torch.float32) -> Case:
        d = shape[-1]
        state = {**linear_state(g, ("linear1",), d, d_ff, dtype), **linear_state(g, ("linear2",), d_ff, d, dtype)}
        return Case(label, (randn(g, *shape, dtype=dtype),), {}, {"d_model": d, "d_ff": d_ff}, state, group=group)
    return [case("x (2, 5, 6), d_ff 10", (2, 5, 6), 10, "basic shapes"),
            case("x (4, 5) without a sequence axis, d_ff 7", (4, 5), 7, "basic shapes"),
            case("batch 1, x (1, 1, 3), d_ff 1", (1, 1, 3), 1, "batch 1 and d_ff 1"),
            case("float64, x (3, 2, 4), d_ff 16", (3, 2, 4), 16, "float64")]


class _FFNMistake(nn.Module):
    """The members of PositionwiseFeedForward (linear1, linear2); each subclass misplaces the activation."""

    def __init__(self, d_model, d_ff, dropout=0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)


class _FFNNoActivation(_FFNMistake):
    def forward(self, x):
        return self.linear2(self.linear1(x))


class _FFNActivationAtOutput(_FFNMistake):
    def forward(self, x):
        return torch.relu(self.linear2(self.linear1(x)))


class _FFNGelu(_FFNMistake):
    def forward(self, x):
        return self.linear2(nn.functional.gelu(self.linear1(x)))


class _FFNResidual(_FFNMistake):
    def forward(self, x):
        return x + self.linear2(torch.relu(self.linear1(x)))


POSITIONWISE_FEED_FORWARD = Item(
    "PositionwiseFeedForward", ASSIGNMENT, "class", _ffn_cases, Reference("layers", "PositionwiseFeedForward"),
    REF_SUBLAYERS + REF_TRANSFORMER_LAYERS + TORCH_LAYERS, outputs=("output",),
    members="linear1 = nn.Linear(d_model, d_ff) and linear2 = nn.Linear(d_ff, d_model)",
    mistakes=(
        Mistake("no_activation", "there is no ReLU between the two linear maps, so the FFN is just one linear map.",
                _FFNNoActivation),
        Mistake("activation_at_output", "the ReLU is applied after the second linear map; "
                "FFN(x) = max(0, x W1 + b1) W2 + b2.", _FFNActivationAtOutput),
        Mistake("gelu", "you used GELU; the original Transformer's FFN uses ReLU.", _FFNGelu),
        Mistake("residual_added", "you added the input (x + FFN(x)); the residual connection belongs to AddNorm, not "
                "to the feed-forward sublayer.", _FFNResidual),
    ),
    hints=("The same two-layer network at every position: expand to d_ff, ReLU, project back to d_model, with dropout "
           "after the ReLU.",
           "Two nn.Linear members (d_model to d_ff, d_ff to d_model) and an nn.Dropout; forward chains linear1, relu, "
           "dropout, linear2. They act on the last axis, so (B, T, d_model) needs no reshaping."))


def check_PositionwiseFeedForward(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of the class PositionwiseFeedForward(d_model, d_ff, dropout=0.0), forward(x), against
    transformer_ref.layers.PositionwiseFeedForward: linear1 and linear2 get random parameters, and it runs on
    several shapes, batch 1 with d_ff 1, and float64 (CUDA copies when cuda=True and a GPU is present); raise
    CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(POSITIONWISE_FEED_FORWARD, impl, seeds, cuda)


ITEMS = (LAYER_NORM, ADD_NORM, POSITIONWISE_FEED_FORWARD)
