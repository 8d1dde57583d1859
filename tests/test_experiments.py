"""The shared book experiments: seeded, on schedule, and actually learning."""

import math

import pytest

from transformer_ref.experiments import train_reverse_transformer


@pytest.mark.parametrize("norm_first", [False, True])
def test_train_reverse_transformer_is_seeded_and_follows_the_schedule(norm_first):
    a, acc_a = train_reverse_transformer(norm_first=norm_first, lr=1e-2, warmup_steps=5, steps=12, seed=3)
    b, acc_b = train_reverse_transformer(norm_first=norm_first, lr=1e-2, warmup_steps=5, steps=12, seed=3)
    assert a.loss == b.loss and acc_a == acc_b
    assert len(a.loss) == 12 and 0.0 <= acc_a <= 1.0
    assert a.lr[0] == 0.0 and math.isclose(a.lr[5], 1e-2)   # linear warm-up to the peak at step 5
    assert a.lr[-1] < a.lr[6]                                # then cosine decay


def test_train_reverse_transformer_learns():
    history, _ = train_reverse_transformer(norm_first=True, lr=3e-3, warmup_steps=10, steps=60, seed=0)
    assert sum(history.loss[-5:]) / 5 < 0.7 * sum(history.loss[:5]) / 5
