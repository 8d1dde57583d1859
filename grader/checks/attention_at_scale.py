"""Checks for assignment 11_attention_at_scale: online_softmax_step, cached_attention_step.

Each graded item below has, in this order: the cases it is called on, its known mistakes (one small function
each, over a helper with one knob per mistake), the Item that ties them to the reference in transformer_ref
and the shortcuts it may not call, and its check_<item> function for the notebook.

online_softmax_step's mistakes come in pairs with one key: the mistake alone, and the mistake together with
the NaN of a row that has seen no key yet (m = -inf) and whose tile is all -inf too. Most students meet that
row only in the hidden tests, so the rescaling mistake is named whether or not their code guards it.
"""

from __future__ import annotations

import math

import torch

from grader.checks.cases import Case, randn
from grader.checks.item import Item, Mistake, Reference
from grader.checks.report import assert_passes
from grader.checks.shortcuts import REF_ATTENTION, TORCH_ATTENTION, TORCH_ATTENTION_OPS

ASSIGNMENT = "11_attention_at_scale"

REF_AT_SCALE = ("transformer_ref.tiled_attention.online_softmax_step", "transformer_ref.tiled_attention.tiled_attention",
                "transformer_ref.tiled_attention._attend_query_tile", "transformer_ref.kv_cache.KVCache.update",
                "transformer_ref.masks.causal_mask", "transformer_ref.masks.decoder_self_attention_mask",
                "transformer_ref.multihead.MultiHeadAttention.forward")
AT_SCALE_SHORTCUTS = TORCH_ATTENTION + REF_ATTENTION + REF_AT_SCALE


# ---------------------------------------------------------------- online_softmax_step

def _running_state(g: torch.Generator, batch: tuple, T_q: int, d_v: int, seen: int, dtype: torch.dtype,
                   unseen_rows: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m, l, acc) of T_q query rows after `seen` keys (m = -inf, l = 0, acc = 0 when seen = 0), computed by the
    reference; the rows in `unseen_rows` had every one of those keys masked, so they are still at the start."""
    from transformer_ref.tiled_attention import online_softmax_step
    m = torch.full((*batch, T_q, 1), -math.inf, dtype=dtype)
    l, acc = torch.zeros_like(m), torch.zeros(*batch, T_q, d_v, dtype=dtype)
    if seen == 0:
        return m, l, acc
    scores = randn(g, *batch, T_q, seen, dtype=dtype, scale=1.5)
    scores[..., list(unseen_rows), :] = -math.inf
    return online_softmax_step(m, l, acc, scores, randn(g, *batch, seen, d_v, dtype=dtype))


def _tile(g: torch.Generator, batch: tuple, T_q: int, B_k: int, d_v: int, dtype: torch.dtype = torch.float32,
          masked: float = 0.0, empty_rows: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores_tile, v_tile): even query rows shifted up by 4 (their max grows past an earlier one), odd rows
    down by 4 (their max stays); a share `masked` of the scores and the rows `empty_rows` set to -inf."""
    shift = torch.tensor([4.0 if i % 2 == 0 else -4.0 for i in range(T_q)], dtype=dtype).unsqueeze(-1)
    scores = randn(g, *batch, T_q, B_k, dtype=dtype, scale=1.5) + shift
    if masked:
        scores = scores.masked_fill(torch.rand(*batch, T_q, B_k, generator=g) < masked, -math.inf)
    scores[..., list(empty_rows), :] = -math.inf
    return scores, randn(g, *batch, B_k, d_v, dtype=dtype)


def _step_case(g: torch.Generator, label: str, group: str, batch: tuple, T_q: int, B_k: int, d_v: int, seen: int,
               dtype: torch.dtype = torch.float32, masked: float = 0.0, empty_rows: tuple[int, ...] = (),
               unseen_rows: tuple[int, ...] = (), meta: bool = False) -> Case:
    state = _running_state(g, batch, T_q, d_v, seen, dtype, unseen_rows)
    return Case(label, (*state, *_tile(g, batch, T_q, B_k, d_v, dtype, masked, empty_rows)), group=group,
                meta_inputs=meta)


def _step_cases(g: torch.Generator, seed: int) -> list[Case]:
    first, later = "the first tile (m = -inf, l = 0, acc = 0)", "a later tile: the max grows or stays"
    masked, device = "masked scores (-inf) and float64", "inputs on another device"
    T_q, B_k, d_v, seen = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((2, 7), (1, 7), (1, 6), (1, 9)))
    return [
        _step_case(g, "scores_tile (3, 4), v_tile (4, 2)", first, (), 3, 4, 2, 0),
        _step_case(g, "scores_tile (2, 2, 4, 5), v_tile (2, 2, 5, 3)", first, (2, 2), 4, 5, 3, 0),
        _step_case(g, "after 5 keys: scores_tile (2, 4, 3), v_tile (2, 3, 2)", later, (2,), 4, 3, 2, 5),
        _step_case(g, f"after {seen} keys: scores_tile (2, 3, {T_q}, {B_k}), v_tile (2, 3, {B_k}, {d_v})", later,
                   (2, 3), T_q, B_k, d_v, seen),
        _step_case(g, "after 4 keys, a tile of one key: scores_tile (3, 1), v_tile (1, 2)", later, (), 3, 1, 2, 4),
        _step_case(g, "after 6 keys: scores_tile (2, 4, 5) with -inf scores, row 1 all -inf", masked, (2,), 4, 5, 3,
                   6, masked=0.4, empty_rows=(1,)),
        _step_case(g, "float64, scores_tile (2, 5, 4); row 3: no key yet (m = -inf), an all -inf tile", masked,
                   (2,), 5, 4, 2, 3, torch.float64, masked=0.3, empty_rows=(3,), unseen_rows=(3,)),
        _step_case(g, "float64, after 7 keys: scores_tile (3, 3, 6), v_tile (3, 6, 4)", masked, (3,), 3, 6, 4, 7,
                   torch.float64),
        _step_case(g, "after 3 keys: scores_tile (2, 3, 4) on the meta device (no values)", device, (2,), 3, 4, 2, 3,
                   meta=True),
    ]


def _online_step(m, l, acc, scores_tile, v_tile, *, rescale_l=True, rescale_acc=True, tile_max=False,
                 old_max=False, inverted=False, shifted=True, normalised=False, guard=True):
    """The online-softmax update with one knob turned the wrong way (the mistakes below); with no knob turned
    it is right. guard=False: a row whose new max is -inf subtracts -inf (NaN) instead of 0."""
    m_tile = scores_tile.amax(dim=-1, keepdim=True)
    m_new = m_tile if tile_max else torch.maximum(m, m_tile)
    shift = m_new.masked_fill(m_new == -math.inf, 0.0) if guard else m_new
    p = torch.exp(scores_tile - shift) if shifted else torch.exp(scores_tile)
    c = torch.exp(shift - m) if inverted else torch.exp(m - shift) if shifted else torch.ones_like(m)
    l_new = (c * l if rescale_l else l) + p.sum(dim=-1, keepdim=True)
    acc_new = (c * acc if rescale_acc else acc) + p @ v_tile
    return (m if old_max else m_new), l_new, (acc_new / l_new if normalised else acc_new)


def _nan_rows(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, guard=False)


def _l_not_rescaled(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, rescale_l=False)


def _l_not_rescaled_nan(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, rescale_l=False, guard=False)


def _acc_not_rescaled(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, rescale_acc=False)


def _acc_not_rescaled_nan(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, rescale_acc=False, guard=False)


def _nothing_rescaled(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, rescale_l=False, rescale_acc=False)


def _nothing_rescaled_nan(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, rescale_l=False, rescale_acc=False, guard=False)


def _rescale_inverted(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, inverted=True)


def _tile_max(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, tile_max=True)


def _tile_max_nan(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, tile_max=True, guard=False)


def _old_max(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, old_max=True)


def _old_max_nan(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, old_max=True, guard=False)


def _unshifted(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, shifted=False)


def _divided_by_l(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, normalised=True)


def _divided_by_l_nan(m, l, acc, scores_tile, v_tile):
    return _online_step(m, l, acc, scores_tile, v_tile, normalised=True, guard=False)


L_NOT_RESCALED = ("the running sum l is not rescaled when the max grows: l' = exp(m - m') * l + rowsum(P), "
                  "with P = exp(scores - m').")
ACC_NOT_RESCALED = ("the accumulator is not rescaled when the max grows: acc' = exp(m - m') * acc + P @ v_tile, "
                    "the same factor as for l.")
NOTHING_RESCALED = ("neither l nor acc is rescaled when the max grows: multiply both by exp(m - m') before "
                    "adding the tile's terms.")
TILE_MAX = "your new max is the tile's max alone; it is the running max: m' = max(m, rowmax(scores_tile))."
OLD_MAX = "you return the old max m; return the new running max m' = max(m, rowmax(scores_tile))."
DIVIDED = ("you divide acc by l inside the step; the step returns the unnormalised acc, and the division "
           "acc / l happens once, after the last tile.")

ONLINE_SOFTMAX_STEP = Item(
    "online_softmax_step", ASSIGNMENT, "function", _step_cases,
    Reference("tiled_attention", "online_softmax_step"), AT_SCALE_SHORTCUTS, outputs=("m", "l", "acc"),
    forbidden_ops=TORCH_ATTENTION_OPS,
    mistakes=(
        Mistake("l_not_rescaled", L_NOT_RESCALED, _l_not_rescaled),
        Mistake("l_not_rescaled", L_NOT_RESCALED, _l_not_rescaled_nan),
        Mistake("acc_not_rescaled", ACC_NOT_RESCALED, _acc_not_rescaled),
        Mistake("acc_not_rescaled", ACC_NOT_RESCALED, _acc_not_rescaled_nan),
        Mistake("nothing_rescaled", NOTHING_RESCALED, _nothing_rescaled),
        Mistake("nothing_rescaled", NOTHING_RESCALED, _nothing_rescaled_nan),
        Mistake("rescale_inverted", "your rescaling factor is exp(m' - m), which is >= 1; it is exp(m - m') "
                "(old max minus new), <= 1, and 0 on the first tile.", _rescale_inverted),
        Mistake("tile_max", TILE_MAX, _tile_max),
        Mistake("tile_max", TILE_MAX, _tile_max_nan),
        Mistake("old_max", OLD_MAX, _old_max),
        Mistake("old_max", OLD_MAX, _old_max_nan),
        Mistake("unshifted", "your l and acc add exp(scores) itself; add exp(scores - m') (m' the new max), "
                "so no exponential exceeds 1, and rescale the old sums by exp(m - m').", _unshifted),
        Mistake("divided_by_l", DIVIDED, _divided_by_l),
        Mistake("divided_by_l", DIVIDED, _divided_by_l_nan),
        Mistake("nan_rows", "a row with no key yet (m = -inf) and an all -inf tile gets exp(-inf - (-inf)) = "
                "NaN; where m' = -inf subtract 0 instead, so it keeps m = -inf, l = 0, acc = 0.", _nan_rows),
    ),
    hints=("The tile may raise a row's maximum. Everything summed so far (l and acc) was computed relative to the old "
           "maximum m, so it must be brought to the new one before the tile's terms are added.",
           "Take the new maximum over m and the tile's row maxima; the old sums are multiplied by exp(m - m_new); the "
           "tile adds exp(scores - m_new) to l (summed over keys) and those weights times v_tile to acc. No division "
           "here: that happens once, after the last tile."))


def check_online_softmax_step(impl, seeds=(0,), cuda=False):
    """Check a submission of online_softmax_step(m, l, acc, scores_tile, v_tile) -> (m', l', acc') against
    transformer_ref.tiled_attention on running states before and after earlier tiles (each seed, and CUDA copies
    when cuda=True and a GPU is present); raise CheckFailed with what was expected, what came back and the
    likely mistake."""
    assert_passes(ONLINE_SOFTMAX_STEP, impl, seeds, cuda)


# ---------------------------------------------------------------- cached_attention_step

def reference_cached_attention_step(q, k, v, k_cache, v_cache):
    """transformer_ref's cached attention, as MultiHeadAttention.forward(..., cache=...) runs it after the
    projections: KVCache.update appends the new keys and values, the causal rule of masks.causal_mask(T_new, T)
    puts the new queries at positions t .. T - 1, and attention.scaled_dot_product_attention attends."""
    from transformer_ref.attention import scaled_dot_product_attention
    from transformer_ref.kv_cache import KVCache
    from transformer_ref.masks import causal_mask
    keys, values = KVCache(k_cache, v_cache).update(k, v)  # (..., t + T_new, d_k), (..., t + T_new, d_v)
    output, _ = scaled_dot_product_attention(q, keys, values, causal_mask(q.size(-2), keys.size(-2), q.device))
    return output, keys, values


def _cached_args(g: torch.Generator, batch: tuple, t: int, T_new: int, d_k: int, d_v: int,
                 dtype: torch.dtype = torch.float32) -> tuple:
    """(q, k, v, k_cache, v_cache): T_new new positions after t cached ones."""
    return (randn(g, *batch, T_new, d_k, dtype=dtype), randn(g, *batch, T_new, d_k, dtype=dtype),
            randn(g, *batch, T_new, d_v, dtype=dtype), randn(g, *batch, t, d_k, dtype=dtype),
            randn(g, *batch, t, d_v, dtype=dtype))


def _cached_cases(g: torch.Generator, seed: int) -> list[Case]:
    step, first = "one new token (a decoding step)", "an empty cache or several new positions"
    wide, device = "float64 and no head axis", "inputs on another device"
    B, H, t, d = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 4), (1, 4), (1, 9), (2, 7)))
    return [
        Case("q (1, 2, 1, 4), cache of t = 3: k_cache (1, 2, 3, 4)", _cached_args(g, (1, 2), 3, 1, 4, 4), group=step),
        Case("q (2, 3, 1, 5), t = 6, d_v = 3", _cached_args(g, (2, 3), 6, 1, 5, 3), group=step),
        Case(f"q ({B}, {H}, 1, {d}), t = {t}", _cached_args(g, (B, H), t, 1, d, d), group=step),
        Case("the first token: q (2, 2, 1, 4), an empty cache (2, 2, 0, 4)", _cached_args(g, (2, 2), 0, 1, 4, 4),
             group=first),
        Case("the prompt in one go: q (1, 2, 4, 3), an empty cache", _cached_args(g, (1, 2), 0, 4, 3, 3), group=first),
        Case("a chunk of 3 new positions after t = 3: q (2, 1, 3, 4)", _cached_args(g, (2, 1), 3, 3, 4, 2),
             group=first),
        Case("float64, no head axis: q (2, 1, 5), t = 5", _cached_args(g, (2,), 5, 1, 5, 5, torch.float64), group=wide),
        Case("float64: q (2, 2, 2, 3), t = 2", _cached_args(g, (2, 2), 2, 2, 3, 4, torch.float64), group=wide),
        Case("q (1, 2, 2, 4), t = 4, on the meta device (no values)", _cached_args(g, (1, 2), 4, 2, 4, 4),
             group=device, meta_inputs=True),
        Case("q (2, 1, 2, 3), t = 3, with the default device set to meta", _cached_args(g, (2, 1), 3, 2, 3, 3),
             group=device, default_device="meta"),
    ]


def _visible(T_new: int, T: int, offset: int, device: torch.device) -> torch.Tensor:
    """(T_new, T) bool: new query i may attend to key j iff j <= i + offset."""
    i = torch.arange(T_new, device=device).unsqueeze(1)
    return torch.arange(T, device=device) <= i + offset


def _attend(q, keys, values, allowed=None, scale=None):
    """softmax(q keys^T / scale) values (scale: sqrt(d_k) unless given), keys outside `allowed` (bool, True = may
    attend) excluded."""
    scores = q @ keys.transpose(-2, -1) / (math.sqrt(q.size(-1)) if scale is None else scale)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -math.inf)
    return torch.softmax(scores, dim=-1) @ values


def _cached(q, k, v, k_cache, v_cache, *, offset=None, causal=True, prepend=False, scale=None):
    """The cached step with one knob turned the wrong way; right with none. offset: the causal offset used
    instead of t (the new queries' true first position); scale: instead of sqrt(d_k)."""
    t, T_new = k_cache.size(-2), q.size(-2)
    keys = torch.cat([k, k_cache] if prepend else [k_cache, k], dim=-2)
    values = torch.cat([v, v_cache] if prepend else [v_cache, v], dim=-2)
    allowed = _visible(T_new, t + T_new, t if offset is None else offset, q.device) if causal else None
    return _attend(q, keys, values, allowed, scale), keys, values


def _attends_old_only(q, k, v, k_cache, v_cache):
    output = _attend(q, k_cache, v_cache)
    return output, torch.cat([k_cache, k], dim=-2), torch.cat([v_cache, v], dim=-2)


def _cache_ignored(q, k, v, k_cache, v_cache):
    output = _attend(q, k, v, _visible(q.size(-2), k.size(-2), 0, q.device))
    return output, torch.cat([k_cache, k], dim=-2), torch.cat([v_cache, v], dim=-2)


def _old_cache_returned(q, k, v, k_cache, v_cache):
    output, _, _ = _cached(q, k, v, k_cache, v_cache)
    return output, k_cache, v_cache


def _top_left(q, k, v, k_cache, v_cache):
    return _cached(q, k, v, k_cache, v_cache, offset=0)


def _not_itself(q, k, v, k_cache, v_cache):
    return _cached(q, k, v, k_cache, v_cache, offset=k_cache.size(-2) - 1)


def _offset_before_append(q, k, v, k_cache, v_cache):
    return _cached(q, k, v, k_cache, v_cache, offset=k_cache.size(-2) - q.size(-2))


def _unscaled(q, k, v, k_cache, v_cache):
    return _cached(q, k, v, k_cache, v_cache, scale=1.0)


def _no_causal(q, k, v, k_cache, v_cache):
    return _cached(q, k, v, k_cache, v_cache, causal=False)


def _prepended(q, k, v, k_cache, v_cache):
    return _cached(q, k, v, k_cache, v_cache, prepend=True)


CACHED_ATTENTION_STEP = Item(
    "cached_attention_step", ASSIGNMENT, "function", _cached_cases, lambda: reference_cached_attention_step,
    AT_SCALE_SHORTCUTS, outputs=("output", "k_cache", "v_cache"), forbidden_ops=TORCH_ATTENTION_OPS,
    mistakes=(
        Mistake("attends_old_only", "your queries attend to the cached keys only: append k and v to the cache "
                "first (torch.cat along the positions, dim=-2), then attend over all t + T_new.", _attends_old_only),
        Mistake("cache_ignored", "your queries attend to the new positions only: the cached keys and values of "
                "the t earlier positions are part of what they attend to.", _cache_ignored),
        Mistake("old_cache_returned", "you return the cache you were given; return the extended one, with the "
                "new positions appended (what torch.cat gave you).", _old_cache_returned),
        Mistake("top_left", "your causal mask puts the new queries at positions 0 .. T_new - 1; they are at "
                "t .. t + T_new - 1, so query i sees keys j <= i + t.", _top_left),
        Mistake("not_itself", "your offset is one short (j < i + t): a new query must also see its own key, "
                "j <= i + t.", _not_itself),
        Mistake("offset_before_append", "your causal offset is t - T_new, T_k - T_q with T_k the cache's length "
                "before appending; after appending T_k = t + T_new, so the offset is t: j <= i + t.",
                _offset_before_append),
        Mistake("no_causal", "every new query sees every new key; with several new positions query i may see "
                "only keys j <= i + t (a causal rule over all t + T_new keys).", _no_causal),
        Mistake("prepended", "you put the new keys and values before the cached ones; the cache is in position "
                "order: torch.cat([k_cache, k], dim=-2).", _prepended),
        Mistake("unscaled", "you did not divide the scores by sqrt(d_k): softmax(q K^T / sqrt(d_k)) V.", _unscaled),
    ),
    hints=("The new positions' keys and values join the cache first; then the new queries attend over everything "
           "cached, the new positions included, with a causal rule: a new query may not see a later new key.",
           "Concatenate along the positions axis (-2), cache first. With t cached positions before this step, new "
           "query i may see key j when j <= i + t; build that mask for (T_new, t + T_new) on the inputs' device and "
           "return the output with both extended caches."))


def check_cached_attention_step(impl, seeds=(0,), cuda=False):
    """Check a submission of cached_attention_step(q, k, v, k_cache, v_cache) -> (output, k_cache', v_cache')
    against transformer_ref's cached attention (KVCache.update, the causal rule, scaled_dot_product_attention)
    on caches of t >= 0 positions and T_new >= 1 new ones (each seed, and CUDA copies when cuda=True and a GPU
    is present); raise CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(CACHED_ATTENTION_STEP, impl, seeds, cuda)


ITEMS = (ONLINE_SOFTMAX_STEP, CACHED_ATTENTION_STEP)
