"""The points of each graded item, as its test cell's nbgrader metadata gives them (solutions/<id>/<id>.ipynb).

A student's kernel never sees a cell's metadata, so the pass line and the summary read the points here.
The notebooks stay the source of truth (nbgrader and ``python -m grader`` grade with theirs);
tests/test_progress.py fails when this table and a notebook disagree.
"""

from __future__ import annotations

POINTS: dict[str, dict[str, int]] = {
    "01_history": {"rnn_forward": 4, "additive_attention": 4, "AdditiveAttention": 3},
    "02_positional_encoding": {"sinusoidal_positional_encoding": 4, "relative_position_index": 3,
                               "relative_attention": 5},
    "03_attention": {"dot_product_attention": 3, "scaled_dot_product_attention": 5, "self_attention": 4},
    "04_multi_head": {"split_heads": 3, "merge_heads": 3, "MultiHeadAttention": 6},
    "05_masking": {"causal_mask": 4, "padding_mask": 3, "decoder_self_attention_mask": 4},
    "06_add_norm": {"layer_norm": 4, "AddNorm": 3, "PositionwiseFeedForward": 3},
    "07_transformer": {"EncoderLayer": 4, "DecoderLayer": 4, "greedy_decode": 4},
    "08_bert": {"mask_tokens": 5, "BertEmbeddings": 4, "masked_lm_loss": 3},
    "09_vit": {"patchify": 4, "unpatchify": 3, "PatchEmbedding": 4},
    "10_warmup": {"noam_lr": 3, "warmup_linear_lr": 3, "warmup_cosine_lr": 4},
    "11_attention_at_scale": {"online_softmax_step": 5, "cached_attention_step": 5},
}


def points(assignment: str, name: str) -> int | None:
    """The points of item `name` of `assignment`; None for an item the table does not know."""
    return POINTS.get(assignment, {}).get(name)


def in_words(n: int) -> str:
    """"1 point", "4 points"."""
    return f"{n} point{'s' * (n != 1)}"
