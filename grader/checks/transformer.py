"""Checks for assignment 07_transformer: EncoderLayer, DecoderLayer, greedy_decode.

Each graded item below has, in this order: the cases it is called on (every case in a group a student
can read), its known mistakes (one small class or function each, next to what the student is told), the
Item that ties them to the reference in transformer_ref and the shortcuts it may not call, and its
check_<item> function for the notebook. The layers may use transformer_ref's MultiHeadAttention,
PositionwiseFeedForward and LayerNorm (earlier assignments); the mistakes below do too.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from grader.checks.add_norm import REF_TRANSFORMER_LAYERS, TORCH_LAYERS
from grader.checks.cases import Case, randn, random_mask, tokens
from grader.checks.item import Item, Mistake, Reference
from grader.checks.report import assert_passes
from grader.checks.run import ContractBroken
from grader.checks.wiring import explain_layer
from transformer_ref.layers import DecoderLayer, EncoderLayer, LayerNorm, PositionwiseFeedForward
from transformer_ref.model import Transformer
from transformer_ref.multihead import MultiHeadAttention

ASSIGNMENT = "07_transformer"

# ---------------------------------------------------------------- forbidden shortcuts

REF_STACKS = ("transformer_ref.model.Encoder.forward", "transformer_ref.model.Decoder.forward")
REF_DECODERS = ("transformer_ref.model.Transformer.greedy_decode", "transformer_ref.model.DecoderOnlyLM.forward",
                "transformer_ref.rnn.Seq2Seq.greedy_decode")
LAYER_SHORTCUTS = REF_TRANSFORMER_LAYERS + TORCH_LAYERS + REF_STACKS + REF_DECODERS


def _layer_state(g: torch.Generator, reference: type, init: dict, dtype: torch.dtype) -> dict:
    """Random parameters (in `dtype`) for every parameter of reference(**init), by name."""
    with torch.random.fork_rng(devices=[]):  # building the module draws its own initialisation: not the student's
        module = reference(**init)
    return {name: (randn(g, *p.shape, dtype=dtype, scale=p.size(-1) ** -0.5) if p.dim() > 1 else
                   (1 + randn(g, *p.shape, dtype=dtype, scale=0.2) if "norm" in name and name.endswith("weight")
                    else randn(g, *p.shape, dtype=dtype, scale=0.2)))
            for name, p in module.named_parameters()}


# ---------------------------------------------------------------- EncoderLayer

def _encoder_layer_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, B: int, T: int, d: int, H: int, d_ff: int, group: str, mask: torch.Tensor | None = None,
             dtype: torch.dtype = torch.float32) -> Case:
        init = {"d_model": d, "num_heads": H, "d_ff": d_ff}
        return Case(label, (randn(g, B, T, d, dtype=dtype),), {} if mask is None else {"mask": mask}, init,
                    _layer_state(g, EncoderLayer, init, dtype), group=group)
    return [case("x (2, 5, 8), 2 heads, d_ff 16", 2, 5, 8, 2, 16, "basic shapes"),
            case("batch 1, one position, d_model 4, 1 head", 1, 1, 4, 1, 6, "basic shapes"),
            case("x (3, 6, 6), padding mask (3, 1, 6)", 3, 6, 6, 3, 10, "masks",
                 random_mask(g, 3, 1, 6, empty_row=False)),
            case("float64, x (2, 4, 8), causal mask (4, 4)", 2, 4, 8, 4, 12, "masks",
                 torch.ones(4, 4, dtype=torch.bool).tril(), torch.float64)]


class _EncoderLayerMistake(nn.Module):
    """The members of EncoderLayer; each subclass wires them wrongly in its forward."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff)
        self.norm1, self.norm2 = LayerNorm(d_model), LayerNorm(d_model)

    def attend(self, x, mask):
        return self.self_attn(x, x, x, mask)[0]


class _EncoderPreLN(_EncoderLayerMistake):
    def forward(self, x, mask=None):
        x = x + self.attend(self.norm1(x), mask)
        return x + self.feed_forward(self.norm2(x))


class _EncoderNoResidualAttention(_EncoderLayerMistake):
    def forward(self, x, mask=None):
        h = self.norm1(self.attend(x, mask))
        return self.norm2(h + self.feed_forward(h))


class _EncoderFFNOnInput(_EncoderLayerMistake):
    def forward(self, x, mask=None):
        h = self.norm1(x + self.attend(x, mask))
        return self.norm2(h + self.feed_forward(x))


class _EncoderNormsSwapped(_EncoderLayerMistake):
    def forward(self, x, mask=None):
        h = self.norm2(x + self.attend(x, mask))
        return self.norm1(h + self.feed_forward(h))


class _EncoderMaskIgnored(_EncoderLayerMistake):
    def forward(self, x, mask=None):
        h = self.norm1(x + self.attend(x, None))
        return self.norm2(h + self.feed_forward(h))


ENCODER_LAYER = Item(
    "EncoderLayer", ASSIGNMENT, "class", _encoder_layer_cases, Reference("layers", "EncoderLayer"), LAYER_SHORTCUTS,
    outputs=("output",),
    members="self_attn (MultiHeadAttention), feed_forward (PositionwiseFeedForward), norm1, norm2 (LayerNorm)",
    mistakes=(
        Mistake("pre_ln", "you wrote a pre-LN layer, x + Sublayer(LN(x)); this exercise is the original post-LN "
                "layer, LN(x + Sublayer(x)).", _EncoderPreLN),
        Mistake("no_residual_attention", "the residual connection around self-attention is missing: "
                "norm1(x + self_attn(x, x, x)).", _EncoderNoResidualAttention),
        Mistake("ffn_on_input", "the feed-forward network reads the layer's input x; it reads the output of the "
                "attention block, norm1(x + attention).", _EncoderFFNOnInput),
        Mistake("norms_swapped", "norm1 and norm2 are swapped: norm1 follows self-attention, norm2 the feed-forward "
                "network.", _EncoderNormsSwapped),
        Mistake("mask_ignored", "the mask is not passed to self-attention.", _EncoderMaskIgnored),
    ), explain=explain_layer,
    hints=("Two sublayers, each in a residual block with its own LayerNorm (post-LN): self-attention, then the "
           "feed-forward network. The second block reads the first block's output.",
           "Block 1: self_attn with query, key and value all x, and the mask; keep the output ([0]) of what it "
           "returns, apply dropout, add x, then norm1. Block 2: the same pattern with feed_forward and norm2, on block"
           " 1's output."))


def check_EncoderLayer(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of the class EncoderLayer(d_model, num_heads, d_ff, dropout=0.0), forward(x, mask=None),
    against transformer_ref.layers.EncoderLayer (post-LN): all its parameters get random values, and it runs
    without a mask, with a padding mask and with a causal mask in float64 (CUDA copies when cuda=True and a GPU is
    present); raise CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(ENCODER_LAYER, impl, seeds, cuda)


# ---------------------------------------------------------------- DecoderLayer

def _decoder_layer_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, B: int, T: int, S: int, d: int, H: int, d_ff: int, group: str, masks: bool = False,
             dtype: torch.dtype = torch.float32) -> Case:
        init = {"d_model": d, "num_heads": H, "d_ff": d_ff}
        kwargs = {"self_mask": torch.ones(T, T, dtype=torch.bool).tril(),
                  "memory_mask": random_mask(g, B, 1, S, empty_row=False)} if masks else {}
        return Case(label, (randn(g, B, T, d, dtype=dtype), randn(g, B, S, d, dtype=dtype)), kwargs, init,
                    _layer_state(g, DecoderLayer, init, dtype), group=group)
    return [case("x (2, 4, 8), memory (2, 6, 8), 2 heads", 2, 4, 6, 8, 2, 16, "basic shapes"),
            case("batch 1, one target position, memory of 3", 1, 1, 3, 4, 1, 6, "basic shapes"),
            case("x (3, 5, 6), memory (3, 7, 6), causal self_mask and padding memory_mask", 3, 5, 7, 6, 3, 10,
                 "masks", True),
            case("float64, x (2, 4, 8), memory (2, 3, 8), with masks", 2, 4, 3, 8, 4, 12, "masks", True,
                 torch.float64)]


class _DecoderLayerMistake(nn.Module):
    """The members of DecoderLayer and its three post-LN blocks; each subclass wires them wrongly."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.cross_attn = MultiHeadAttention(d_model, num_heads)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff)
        self.norm1, self.norm2, self.norm3 = LayerNorm(d_model), LayerNorm(d_model), LayerNorm(d_model)

    def self_block(self, x, self_mask):
        return self.norm1(x + self.self_attn(x, x, x, self_mask)[0])

    def cross_block(self, x, memory, memory_mask):
        return self.norm2(x + self.cross_attn(x, memory, memory, memory_mask)[0])

    def ffn_block(self, x):
        return self.norm3(x + self.feed_forward(x))


class _DecoderPreLN(_DecoderLayerMistake):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, self_mask)[0]
        x = x + self.cross_attn(self.norm2(x), memory, memory, memory_mask)[0]
        return x + self.feed_forward(self.norm3(x))


class _DecoderCrossAttendsToX(_DecoderLayerMistake):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.self_block(x, self_mask)
        x = self.norm2(x + self.cross_attn(x, x, x, self_mask)[0])
        return self.ffn_block(x)


class _DecoderCrossFirst(_DecoderLayerMistake):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        return self.ffn_block(self.self_block(self.cross_block(x, memory, memory_mask), self_mask))


class _DecoderSelfMaskIgnored(_DecoderLayerMistake):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        return self.ffn_block(self.cross_block(self.self_block(x, None), memory, memory_mask))


class _DecoderNoResidualFFN(_DecoderLayerMistake):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.cross_block(self.self_block(x, self_mask), memory, memory_mask)
        return self.norm3(self.feed_forward(x))


DECODER_LAYER = Item(
    "DecoderLayer", ASSIGNMENT, "class", _decoder_layer_cases, Reference("layers", "DecoderLayer"), LAYER_SHORTCUTS,
    outputs=("output",),
    members="self_attn, cross_attn (MultiHeadAttention), feed_forward (PositionwiseFeedForward), "
            "norm1, norm2, norm3 (LayerNorm)",
    mistakes=(
        Mistake("pre_ln", "you wrote a pre-LN layer, x + Sublayer(LN(x)); this exercise is the post-LN layer, "
                "LN(x + Sublayer(x)).", _DecoderPreLN),
        Mistake("cross_attends_to_x", "cross-attention takes its keys and values from x; they come from the encoder "
                "output: cross_attn(x, memory, memory, memory_mask).", _DecoderCrossAttendsToX),
        Mistake("cross_first", "cross-attention comes before self-attention; the order is masked self-attention, "
                "cross-attention, feed-forward.", _DecoderCrossFirst),
        Mistake("self_mask_ignored", "self_mask is not passed to self-attention, so positions see the future.",
                _DecoderSelfMaskIgnored),
        Mistake("no_residual_ffn", "the residual connection around the feed-forward network is missing: "
                "norm3(x + feed_forward(x)).", _DecoderNoResidualFFN),
    ), explain=explain_layer,
    hints=("Three residual blocks, each with its own norm: masked self-attention over the target; cross-attention "
           "whose queries come from the decoder and whose keys and values are the encoder's memory; the feed-forward "
           "network.",
           "Block 1: self_attn of x with self_mask. Block 2: cross_attn with queries = block 1's output, keys = values"
           " = memory, and memory_mask. Block 3: feed_forward. Each: dropout of the sublayer's output, plus the "
           "block's input, then its norm (norm1, norm2, norm3)."))


def check_DecoderLayer(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of the class DecoderLayer(d_model, num_heads, d_ff, dropout=0.0),
    forward(x, memory, self_mask=None, memory_mask=None), against transformer_ref.layers.DecoderLayer (post-LN):
    all its parameters get random values, and it runs without masks and with a causal self_mask and a padding
    memory_mask (CUDA copies when cuda=True and a GPU is present); raise CheckFailed with what was expected, what
    came back and the likely mistake."""
    assert_passes(DECODER_LAYER, impl, seeds, cuda)


# ---------------------------------------------------------------- greedy_decode

def _greedy_decode(model, src, bos_id, eos_id, max_len):
    """The reference: transformer_ref's Transformer.greedy_decode."""
    return model.greedy_decode(src, bos_id, eos_id, max_len)


BOS, PAD = 1, 0   # the cases' bos_id and the models' pad_id; the models never predict either
RULES = "torch.no_grad() and src's device"   # the group of the cases that check the notebook's two rules


class _WatchedTransformer(Transformer):
    """The cases' model: a Transformer whose encode and decode refuse, with a message for the student, what the
    notebook rules out: gradients on (where ``no_grad_required``: the notebook says "wrap the loop in
    torch.no_grad()"), and a target longer than the model's positional table (a loop that does not stop at the
    case's ``max_len``; transformer_ref would say "build the module with a larger max_len", a fix that changes
    the model)."""

    no_grad_required = False
    max_len_asked: int | None = None

    def encode(self, src):
        self._watch("encode")
        return super().encode(src)

    def decode(self, tgt, memory, src, tgt_mask=None, cache=None):
        self._watch("decode")
        if isinstance(tgt, torch.Tensor) and tgt.dim() == 2 and tgt.size(1) > self.max_len:
            raise ContractBroken(f"it kept decoding past max_len = {self.max_len_asked} (model.decode got "
                                 f"{tgt.size(1)} tokens). Stop when the output has max_len tokens (bos_id "
                                 f"included) or every sequence has produced eos_id.")
        return super().decode(tgt, memory, src, tgt_mask, cache)

    def _watch(self, method: str) -> None:
        if self.no_grad_required and torch.is_grad_enabled():
            raise ContractBroken(f"model.{method} ran with gradients on. Wrap the decoding in "
                                 f"`with torch.no_grad():`, as the notebook asks.")


def _greedy_cases(g: torch.Generator, seed: int) -> list[Case]:
    """Small random Transformers and eos ids picked so that: the single sequence stops before max_len; in the
    first batch every sequence produces eos, at different steps; in the second some sequence never does.
    The last two cases check the notebook's rules: the models' parameters require gradients and the model
    refuses to run with gradients on; and with the default device set to meta, any tensor made without
    device=src.device is on another device than the model and src."""
    one = _greedy_case(g, "batch 1, src (1, 3)", 1, 3, 9, 6, "all", "one sequence")
    every = _greedy_case(g, "src (3, 5), vocab 12", 3, 5, 12, 10, "all", "a batch where every sequence stops")
    some = _greedy_case(g, "src (4, 6) with padding, vocab 10", 4, 6, 10, 10, "some",
                        "a batch where some sequence runs to max_len")
    model, *rest = every.args
    watched = copy.deepcopy(model)
    watched.no_grad_required = True
    return [one, every, some, Case(every.label + ", parameters that require gradients", (watched, *rest), group=RULES),
            Case(one.label + ", default device meta", one.args, group=RULES, default_device="meta")]


def _greedy_case(g: torch.Generator, label: str, B: int, S: int, vocab: int, max_len: int, finish: str,
                 group: str) -> Case:
    """One case: a random model and source batch, with an eos id after which `finish` ("all" or "some") of the
    sequences stop before max_len (at different steps when B > 1). Untrained models often repeat one token,
    so models are drawn until one fits (at most 20; the last is kept either way)."""
    for _ in range(20):
        with torch.random.fork_rng(devices=[]):  # the model's initialisation, without touching the student's RNG
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
            translator = _WatchedTransformer(vocab, vocab, d_model=16, num_heads=2, num_encoder_layers=1,
                                             num_decoder_layers=1, d_ff=32, dropout=0.0, max_len=16, pad_id=PAD).eval()
        with torch.no_grad():
            translator.output_proj.bias[[PAD, BOS]] = -1e4   # never predicted: padding after eos stays visible
        src = tokens(g, B, S, PAD, vocab)
        src[:, 0] = torch.where(src[:, 0] == PAD, 3, src[:, 0])  # no empty source
        eos = _pick_eos(_greedy(translator, src, BOS, -1, max_len), finish)  # eos -1: decode to max_len
        if eos is not None:
            break
    else:
        eos = 2
    translator.max_len_asked = max_len
    return Case(f"{label}, bos {BOS}, eos {eos}, max_len {max_len}", (translator, src, BOS, eos, max_len),
                group=group)


def _pick_eos(free: torch.Tensor, finish: str) -> int | None:
    """A token id to use as eos, given the greedy outputs `free` (B, max_len) of a run that never stopped: with
    finish "all" every row produces it before the last step, with "some" one row or more does and the others
    never do; when B > 1 the rows that produce it do so first at different steps. Of the tokens that fit, the
    one with the most different stopping steps, then the latest; None if no token fits."""
    max_len = free.size(1)
    best, best_score = None, None
    for token in free[:, 1:].unique().tolist():
        steps = [int(hits[0]) + 1 if len(hits := (row[1:] == token).nonzero()) else None for row in free]
        stopping = [s for s in steps if s is not None]
        if max(stopping) > max_len - 2:      # a row that stops at the last step looks like one that runs on
            continue
        if finish == "all" and len(stopping) < len(steps) or finish == "some" and len(stopping) == len(steps):
            continue
        if len(steps) > 1 and len(set(stopping)) < 2:
            continue
        score = (len(set(stopping)), max(stopping))
        if best_score is None or score > best_score:
            best, best_score = int(token), score
    return best


@torch.no_grad()
def _greedy(model, src, bos_id, eos_id, max_len, *, position=-1, stop_when_any=False, pad_finished=True,
            check_eos=True, steps=None):
    """Greedy decoding with one thing done wrong, chosen by the keyword arguments (the defaults are right)."""
    memory = model.encode(src)
    out = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for _ in range(max_len - 1 if steps is None else steps):
        nxt = model.decode(out, memory, src)[:, position].argmax(-1)
        if pad_finished:
            nxt = nxt.masked_fill(finished, model.pad_id)
        out = torch.cat([out, nxt[:, None]], dim=1)
        finished |= nxt == eos_id
        if check_eos and (finished.any() if stop_when_any else finished.all()):
            break
    return out


def _greedy_first_position(model, src, bos_id, eos_id, max_len):
    return _greedy(model, src, bos_id, eos_id, max_len, position=0)


def _greedy_stop_when_any(model, src, bos_id, eos_id, max_len):
    return _greedy(model, src, bos_id, eos_id, max_len, stop_when_any=True)


def _greedy_no_pad_after_eos(model, src, bos_id, eos_id, max_len):
    return _greedy(model, src, bos_id, eos_id, max_len, pad_finished=False)


def _greedy_never_stops(model, src, bos_id, eos_id, max_len):
    return _greedy(model, src, bos_id, eos_id, max_len, check_eos=False)


def _greedy_max_len_off_by_one(model, src, bos_id, eos_id, max_len):
    return _greedy(model, src, bos_id, eos_id, max_len, steps=max_len)


GREEDY_DECODE = Item(
    "greedy_decode", ASSIGNMENT, "function", _greedy_cases, lambda: _greedy_decode, REF_DECODERS,
    outputs=("tokens",),
    mistakes=(
        Mistake("first_position", "you took the prediction at the first position, logits[:, 0]; the next token is "
                "predicted at the last position, logits[:, -1].", _greedy_first_position),
        Mistake("stop_when_any", "you stopped when the first sequence produced eos_id; continue until every sequence "
                "has (or max_len is reached).", _greedy_stop_when_any),
        Mistake("no_pad_after_eos", "a sequence that has finished keeps getting real tokens; after its eos_id put "
                "model.pad_id.", _greedy_no_pad_after_eos),
        Mistake("never_stops", "you never stop at eos_id; stop as soon as every sequence has produced it.",
                _greedy_never_stops),
        Mistake("max_len_off_by_one", "your output can be max_len + 1 tokens long; max_len counts the bos token, so "
                "at most max_len - 1 tokens are generated.", _greedy_max_len_off_by_one),
    ),
    hints=("Encode the source once, then grow the target one token at a time: feed the tokens so far to the decoder "
           "and append the most likely next token; stop after max_len tokens or when every sequence has produced "
           "eos_id.",
           "Start from a (B, 1) tensor of bos_id on src's device. Under torch.no_grad(), loop: argmax of the decoder's"
           " logits at the last position, appended as a new column (torch.cat); keep a bool per sequence for "
           "'finished' (fill finished ones with model.pad_id) and break when all are."))


def check_greedy_decode(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of greedy_decode(model, src, bos_id, eos_id, max_len) against
    transformer_ref.model.Transformer.greedy_decode with small random Transformers, for one sequence and for
    batches whose sequences produce eos_id at different steps (CUDA copies when cuda=True and a GPU is present);
    raise CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(GREEDY_DECODE, impl, seeds, cuda)


ITEMS = (ENCODER_LAYER, DECODER_LAYER, GREEDY_DECODE)
