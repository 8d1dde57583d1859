"""transformer_ref.train: the loop, its history, clipping, schedules, seeding, checkpoints,
evaluation; then a short seeded run of every model on its toy task (the loss must fall clearly).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_ref import data, train
from transformer_ref.data import BOS_ID, EOS_ID, PAD_ID, BatchIterator


# ---------------------------------------------------------------------------------------------
# The loop on a tiny model of our own
# ---------------------------------------------------------------------------------------------


def _blobs(n=256, seed=0):
    """Two Gaussian blobs in 2-D, labels 0/1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + 3.0 * (2 * y[:, None] - 1)
    return x, y


def _mlp():
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))


def _run(seed, steps=30, **kw):
    train.seed_everything(seed)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = BatchIterator(*_blobs(), batch_size=32)        # shuffles with the global RNG
    hist = train.fit(model, batches, train.classification_loss(), opt, steps=steps, progress=False, **kw)
    return model, hist


def test_fit_lowers_loss_and_records_history():
    model, hist = _run(0, steps=40)
    assert len(hist) == len(hist.lr) == len(hist.grad_norm) == 40
    assert hist.loss[-1] < 0.5 * hist.loss[0]
    assert hist.lr == [0.1] * 40
    assert all(g > 0 for g in hist.grad_norm)
    assert train.classification_accuracy(model, *_blobs(seed=1)) > 0.95


def test_fit_records_the_grad_norm_before_clipping_and_clips():
    """SGD(lr=1) moves the parameters by exactly the clipped gradient, whose norm is max_norm."""
    x, y = _blobs(64)
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    hist = train.fit(model, [(x, y)], train.classification_loss(),
                     torch.optim.SGD(model.parameters(), lr=1.0), steps=1, max_norm=1e-3, progress=False)
    torch.testing.assert_close(torch.tensor(hist.grad_norm[0]), expected)
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert expected > 1e-2
    torch.testing.assert_close(step.norm(), torch.tensor(1e-3), rtol=1e-4, atol=0)


def test_fit_steps_the_scheduler_once_per_step():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    hist = train.fit(model, [_blobs(32)], train.classification_loss(), opt, steps=5,
                     scheduler=sched, progress=False)
    assert hist.lr == pytest.approx([0.5 / (s + 1) for s in range(5)])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 / 6)


def test_fit_by_epochs_and_by_cycling_steps():
    x, y = _blobs(40)
    batches = BatchIterator(x, y, batch_size=16, generator=0)          # 3 batches per pass
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    assert len(train.fit(model, batches, train.classification_loss(), opt, epochs=2, progress=False)) == 6
    assert len(train.fit(model, batches, train.classification_loss(), opt, steps=7, progress=False)) == 7


def test_fit_bad_input():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = train.classification_loss()
    batches = [_blobs(8)]
    with pytest.raises(ValueError, match="exactly one of steps and epochs"):
        train.fit(model, batches, loss, opt, progress=False)
    with pytest.raises(ValueError, match="exactly one of steps and epochs"):
        train.fit(model, batches, loss, opt, steps=2, epochs=1, progress=False)
    with pytest.raises(ValueError, match="max_norm must be a positive number"):
        train.fit(model, batches, loss, opt, steps=2, max_norm=0.0, progress=False)
    with pytest.raises(ValueError, match="one-shot generator"):
        train.fit(model, (b for b in batches), loss, opt, steps=3, progress=False)
    with pytest.raises(TypeError, match="must have a len"):
        train.fit(model, (b for b in batches), loss, opt, epochs=1, progress=False)
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        train.fit(model, batches, lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none"),
                  opt, steps=1, progress=False)


def test_seed_everything_makes_runs_repeat():
    model_a, hist_a = _run(7)
    model_b, hist_b = _run(7)
    _, hist_c = _run(8)
    assert hist_a.loss == hist_b.loss and hist_a.grad_norm == hist_b.grad_norm
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert hist_a.loss != hist_c.loss
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        train.seed_everything(-1)


def test_checkpoint_round_trip_resumes_identically(tmp_path):
    """Train 5 steps, save, train 5 more; a fresh model loaded from the checkpoint and trained
    the same 5 steps ends with the same parameters, optimizer state and schedule."""
    x, y = _blobs(64)

    def setup(seed):
        torch.manual_seed(seed)
        model = _mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.9 ** s)

    def more(model, opt, sched):
        return train.fit(model, [(x, y)], train.classification_loss(), opt, steps=5,
                         scheduler=sched, progress=False)

    model, opt, sched = setup(0)
    more(model, opt, sched)
    path = tmp_path / "ckpt.pt"
    train.save_checkpoint(path, model, opt, step=5, scheduler=sched, config={"hidden": 16})
    hist = more(model, opt, sched)

    model2, opt2, sched2 = setup(1)                    # different initial weights
    info = train.load_checkpoint(path, model2, opt2, sched2)
    assert info == {"step": 5, "config": {"hidden": 16}}
    hist2 = more(model2, opt2, sched2)
    assert hist.loss == hist2.loss and hist.lr == hist2.lr
    for p, p2 in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p, p2, rtol=0, atol=0)

    train.save_checkpoint(path, model)                 # model only
    assert train.load_checkpoint(path, _mlp())["step"] == 0
    with pytest.raises(ValueError, match="holds no optimizer state"):
        train.load_checkpoint(path, model2, opt2)


def test_grad_accum_over_a_list_of_batches_matches_one_concatenated_batch():
    """4 batches of 16 rows accumulated per step give the steps of one batch of 64 (SGD with
    momentum, clipping); tests/test_distributed.py covers sharded batches and several processes."""
    x, y = _blobs(64)

    def run(batches, grad_accum):
        torch.manual_seed(0)
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        hist = train.fit(model, batches, train.classification_loss(), opt, steps=3, max_norm=1.0,
                         grad_accum=grad_accum, progress=False)
        return hist, model

    whole, whole_model = run([(x, y)], 1)
    parts, parts_model = run([(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)], 4)
    torch.testing.assert_close(torch.tensor(parts.loss), torch.tensor(whole.loss))
    torch.testing.assert_close(torch.tensor(parts.grad_norm), torch.tensor(whole.grad_norm))
    for p, q in zip(parts_model.parameters(), whole_model.parameters()):
        torch.testing.assert_close(p, q)
    assert whole.loss[1] < whole.loss[0] - 1e-3                   # the steps did move the model


def test_get_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert train.get_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.get_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert train.get_device() == torch.device("cpu")


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")
def test_autocast_is_bf16_on_cuda_only():
    assert isinstance(train.autocast(torch.device("cpu")), type(train.autocast(torch.device("cpu"), False)))
    cuda_ctx = train.autocast(torch.device("cuda"))
    assert isinstance(cuda_ctx, torch.autocast) and cuda_ctx.fast_dtype == torch.bfloat16
    assert not isinstance(train.autocast(torch.device("cuda"), enabled=False), torch.autocast)


def test_training_step_on_device(device):
    """One step on ``device``: the model moves there, batches follow, the loss is finite and the
    parameters change (bf16 autocast on CUDA, float32 on CPU)."""
    torch.manual_seed(0)
    model = _mlp()
    x, y = _blobs(32)
    hist = train.fit(model, [(x, y)], train.classification_loss(),
                     torch.optim.SGD(model.parameters(), lr=0.1), steps=3, device=device,
                     max_norm=1.0, progress=False)
    assert next(model.parameters()).device.type == device.type
    assert all(math.isfinite(v) for v in hist.loss + hist.grad_norm)
    assert hist.loss[-1] < hist.loss[0]
    assert train.evaluate_loss(model, [(x, y)], train.classification_loss()) < hist.loss[0]


def test_to_device_moves_nested_batches():
    batch = {"a": torch.zeros(1), "b": [torch.ones(1), 3]}
    moved = train.to_device(batch, torch.device("meta"))
    assert moved["a"].is_meta and moved["b"][0].is_meta and moved["b"][1] == 3


# ---------------------------------------------------------------------------------------------
# Loss functions and evaluation against direct computations
# ---------------------------------------------------------------------------------------------

class _Echo(nn.Module):
    """Stand-in encoder-decoder: logits are fixed random numbers; greedy_decode returns a preset."""

    def __init__(self, vocab=11, decoded=None, with_weights=False):
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))
        self.decoded, self.with_weights, self.calls = decoded, with_weights, []

    def forward(self, src, tgt_in=None):
        tokens = src if tgt_in is None else tgt_in
        return self.table[tokens]                                      # (B, T, V)

    def greedy_decode(self, src, bos_id, eos_id, max_len):
        self.calls.append((bos_id, eos_id, max_len))
        out = self.decoded[:src.size(0)]
        return (out, None) if self.with_weights else out


def test_seq2seq_and_language_model_losses_match_cross_entropy():
    model = _Echo()
    src = torch.tensor([[7, 8, 9]])
    tgt = torch.tensor([[BOS_ID, 7, 8, EOS_ID, PAD_ID]])
    logits = model.table[tgt[:, :-1]][0]
    expected = F.cross_entropy(logits[:3], tgt[0, 1:4])               # the pad label is ignored
    torch.testing.assert_close(train.seq2seq_loss()(model, (src, tgt)), expected)
    smoothed = F.cross_entropy(logits[:3], tgt[0, 1:4], label_smoothing=0.1)
    torch.testing.assert_close(train.seq2seq_loss(label_smoothing=0.1)(model, (src, tgt)), smoothed)
    torch.testing.assert_close(train.language_model_loss()(model, tgt), expected)
    torch.testing.assert_close(train.language_model_loss()(model, (tgt,)), expected)


def test_logits_of_accepts_common_outputs():
    t = torch.zeros(2, 3)
    for out in (t, (t, None), {"logits": t}, type("Out", (), {"logits": t})()):
        assert train.logits_of(out) is t
    with pytest.raises(TypeError, match="cannot find the logits"):
        train.logits_of("text")


@pytest.mark.parametrize("with_weights", [False, True])
def test_exact_match_accuracy(with_weights):
    tgt = torch.tensor([[BOS_ID, 7, 8, EOS_ID, PAD_ID],
                        [BOS_ID, 9, EOS_ID, PAD_ID, PAD_ID],
                        [BOS_ID, 7, 7, 7, EOS_ID],
                        [BOS_ID, 8, EOS_ID, PAD_ID, PAD_ID]])
    decoded = torch.tensor([[BOS_ID, 7, 8, EOS_ID, 5, 5],      # right; junk after <eos> is ignored
                            [BOS_ID, 9, 9, EOS_ID, PAD_ID, PAD_ID],   # one token too many
                            [BOS_ID, 7, 7, 7, EOS_ID, PAD_ID],        # right
                            [BOS_ID, 8, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])  # never ends: wrong
    model = _Echo(decoded=decoded, with_weights=with_weights)
    src = torch.ones(4, 3, dtype=torch.long)
    assert train.exact_match_accuracy(model, src, tgt, batch_size=3) == 0.5
    assert model.calls[0] == (BOS_ID, EOS_ID, 6)
    no_bos = _Echo(decoded=decoded[:, 1:])                     # decoders that drop the <bos>
    assert train.exact_match_accuracy(no_bos, src, tgt) == 0.5
    with pytest.raises(ValueError, match="same number of rows"):
        train.exact_match_accuracy(model, src[:2], tgt)


# ---------------------------------------------------------------------------------------------
# Every model of the course trains on its toy task
# ---------------------------------------------------------------------------------------------

def _fit_and_check(model, batches, loss_fn, steps, lr, ratio=0.5, **kw):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    hist = train.fit(model, batches, loss_fn, opt, steps=steps, max_norm=1.0, progress=False, **kw)
    first, last = sum(hist.loss[:5]) / 5, sum(hist.loss[-5:]) / 5
    assert last < ratio * first, f"loss fell only from {first:.3f} to {last:.3f}"
    return hist


def test_transformer_learns_to_reverse(device):
    from transformer_ref.model import Transformer
    torch.manual_seed(0)
    src, tgt = data.reverse_task(2048, min_len=3, max_len=8, num_symbols=8, generator=0)
    model = Transformer(len(data.SEQUENCE_VOCAB), len(data.SEQUENCE_VOCAB), d_model=32, num_heads=4,
                        num_encoder_layers=1, num_decoder_layers=1, d_ff=64, dropout=0.0, max_len=16)
    _fit_and_check(model, BatchIterator(src, tgt, batch_size=64, generator=0), train.seq2seq_loss(),
                   steps=80, lr=3e-3, device=device)


@pytest.mark.parametrize("cell, attention", [("gru", True), ("lstm", False)])
def test_seq2seq_rnn_learns_to_copy(device, cell, attention):
    from transformer_ref.rnn import Seq2Seq
    torch.manual_seed(0)
    src, tgt = data.copy_task(2048, min_len=2, max_len=6, num_symbols=8, generator=0)
    model = Seq2Seq(len(data.SEQUENCE_VOCAB), len(data.SEQUENCE_VOCAB), embed_dim=32, hidden_dim=64,
                    cell=cell, attention=attention)
    _fit_and_check(model, BatchIterator(src, tgt, batch_size=64, generator=0), train.seq2seq_loss(),
                   steps=80, lr=1e-2, device=device)


def test_decoder_only_lm_learns_the_corpus(device):
    from transformer_ref.model import DecoderOnlyLM
    torch.manual_seed(0)
    sentences = [s for d in data.text_corpus(500, 2, generator=0) for s in d.sentences]
    tokens = data.encode_sentences(sentences)
    model = DecoderOnlyLM(len(data.TEXT_VOCAB), d_model=32, num_heads=4, num_layers=1, d_ff=64,
                          max_len=tokens.size(1))
    _fit_and_check(model, BatchIterator(tokens, batch_size=64, generator=0), train.language_model_loss(),
                   steps=60, lr=3e-3, device=device)


def _tiny_bert_config():
    from transformer_ref.bert import BertConfig
    return BertConfig(vocab_size=len(data.TEXT_VOCAB), d_model=32, num_layers=2, num_heads=4, d_ff=64,
                      max_len=32, dropout=0.0, pad_token_id=PAD_ID)


def test_bert_masked_lm_learns_the_corpus(device):
    from transformer_ref.bert import BertForMaskedLM, mask_tokens
    torch.manual_seed(0)
    sentences = [s for d in data.text_corpus(500, 2, generator=0) for s in d.sentences]
    tokens = data.encode_sentences(sentences)
    masking = torch.Generator().manual_seed(0)

    def mlm_loss(model, batch):
        inputs, labels = mask_tokens(batch[0], data.MASK_ID, len(data.TEXT_VOCAB),
                                     data.TEXT_VOCAB.special_ids, mlm_probability=0.3, generator=masking)
        return train.token_cross_entropy(model(inputs, attention_mask=batch[0] != PAD_ID), labels,
                                         ignore_index=-100)

    _fit_and_check(BertForMaskedLM(_tiny_bert_config()), BatchIterator(tokens, batch_size=64, generator=0),
                   mlm_loss, steps=150, lr=5e-3, device=device)


def test_bert_classifier_learns_sentiment(device):
    from transformer_ref.bert import BertForSequenceClassification
    torch.manual_seed(0)
    ids, labels = data.text_classification_task(1024, label="sentiment", generator=0)
    model = BertForSequenceClassification(_tiny_bert_config(), num_classes=2)
    _fit_and_check(model, BatchIterator(ids, labels, batch_size=64, generator=0), train.classification_loss(),
                   steps=60, lr=3e-3, device=device)
    test_ids, test_labels = data.text_classification_task(256, label="sentiment", generator=1)
    assert train.classification_accuracy(model, test_ids, test_labels) > 0.9


def test_vit_learns_the_shapes(device):
    from transformer_ref.vit import VisionTransformer
    torch.manual_seed(0)
    images, labels = data.shapes_dataset(1024, image_size=28, generator=0)
    model = VisionTransformer(image_size=28, patch_size=7, in_channels=1, num_classes=len(data.SHAPE_CLASSES),
                              d_model=32, num_layers=2, num_heads=4, d_ff=64)
    _fit_and_check(model, BatchIterator(images, labels, batch_size=64, generator=0), train.classification_loss(),
                   steps=80, lr=3e-3, device=device)


# ---------------------------------------------------------------------------------------------
# The command line (one process here; tests/test_distributed.py runs it under torchrun)
# ---------------------------------------------------------------------------------------------

_TINY = ["--steps", "3", "--batch-size", "16", "--num-examples", "64", "--d-model", "16", "--num-layers", "1",
         "--d-ff", "32", "--warmup-steps", "1", "--no-progress"]


@pytest.mark.parametrize("task", ["reverse", "lm"])
def test_command_line_trains_each_task_and_resumes(task, tmp_path, capsys):
    argv = ["--task", task, *_TINY, "--checkpoint", str(tmp_path / "run.pt")]
    history = train.main(argv)
    out = capsys.readouterr().out
    assert len(history) == 3 and all(math.isfinite(v) for v in history.loss)
    assert f"{task}: 3 steps, final loss {history.loss[-1]:.4f}" in out, out
    again = train.main([*argv, "--resume"])                          # already at step 3: nothing to do
    assert "resuming from" in capsys.readouterr().out
    assert again.loss == history.loss


def test_command_line_bad_input(tmp_path):
    with pytest.raises(SystemExit, match=r"--batch-size \(10\) must be divisible by processes x --grad-accum "
                                         r"= 1 x 4 = 4"):
        train.main(["--task", "shapes", *_TINY, "--batch-size", "10", "--grad-accum", "4"])
    with pytest.raises(SystemExit, match="--resume needs --checkpoint PATH"):
        train.main(["--resume"])
    with pytest.raises(SystemExit, match="--backend nccl needs GPUs; with --device cpu use --backend gloo"):
        train.main(["--device", "cpu", "--backend", "nccl"])
