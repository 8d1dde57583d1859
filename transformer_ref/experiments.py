"""Small, seeded training runs that more than one chapter of the book uses.

Each returns what the chapter plots (a :class:`transformer_ref.train.History`) and what it reports
(an accuracy), so that a chapter calls the experiment instead of repeating its code.
"""

from __future__ import annotations

import torch

from transformer_ref import data, schedules, train
from transformer_ref.model import Transformer


def train_reverse_transformer(*, norm_first: bool, lr: float, warmup_steps: int, steps: int,
                              seed: int = 0, progress: bool = False) -> tuple[train.History, float]:
    """Train a 3+3-layer Transformer (d_model 32) on the reverse task; used by the Add & Norm and warm-up chapters.

    Adam (betas 0.9, 0.98, eps 1e-9 as in Vaswani et al. 2017) with a linear warm-up over
    ``warmup_steps`` to ``lr``, then cosine decay to 0 at ``steps``. ``warmup_steps=1`` is no warm-up:
    step 0 has lr 0 and every later step follows the decay from the full ``lr``.
    Returns (history, exact-match accuracy of greedy decoding on 300 sequences drawn apart from the
    training set; short ones can repeat: for seed 0, 27 of the 49 of length 3 are also in it, none from 5 on).
    """
    train.seed_everything(seed)
    src, tgt = data.reverse_task(4000, min_len=3, max_len=8, generator=seed)
    vocab = len(data.SEQUENCE_VOCAB)
    model = Transformer(vocab, vocab, d_model=32, num_heads=4, num_encoder_layers=3,
                        num_decoder_layers=3, d_ff=64, dropout=0.0, max_len=32, norm_first=norm_first)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9)
    scheduler = schedules.warmup_cosine_scheduler(optimizer, warmup_steps, steps)
    batches = data.BatchIterator(src, tgt, batch_size=64, generator=seed)
    history = train.fit(model, batches, train.seq2seq_loss(), optimizer, steps=steps,
                        scheduler=scheduler, progress=progress)
    test_src, test_tgt = data.reverse_task(300, min_len=3, max_len=8, generator=1000 + seed)
    return history, train.exact_match_accuracy(model, test_src, test_tgt)
