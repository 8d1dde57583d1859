"""Data-parallel training (transformer_ref.distributed and train.fit under torchrun): sharding,
gradient accumulation, resuming from a checkpoint, and 2 processes with gloo on CPU against one
process over the same global batches.

The reference for every comparison is ``_reference_run``: a hand-written loop (no ``fit``, no DDP)
that takes each global batch whole. Cost: about 15 s on 2 CPU cores, most of it the two torchrun
launches (each starts 2 Python processes that import torch).

This file is also the worker that torchrun starts: ``python -m torch.distributed.run
--nproc-per-node 2 --standalone tests/test_distributed.py OUT_DIR``.
"""

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_ref import distributed, train
from transformer_ref.data import BatchIterator
from transformer_ref.distributed import ShardedBatches

REPO = Path(__file__).resolve().parents[1]

# DDP averages the two processes' gradients (sum of two half-batch means / 2) where one process
# takes the mean over the whole batch: equal up to float32 rounding, which a few optimizer steps
# grow to about 1e-6. A wrong shard, a missing all-reduce or a wrong loss scale moves the numbers by
# more than 1e-2.
DDP_TOL = dict(rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# A tiny problem: 3 classes in 4-D, each row carrying its own index so a run can report what it saw
# ---------------------------------------------------------------------------------------------

N, BATCH, STEPS = 56, 16, 6          # 3 global batches per pass: runs cross epoch boundaries


def _data():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (N,), generator=g)
    x = torch.randn(N, 4, generator=g) + 2.0 * F.one_hot(y, 4).float()
    return x, y, torch.arange(N)


def _model(dropout=0.0):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 3))


def _optimizer(model):
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))


class _Recorder:
    """loss_fn that records the row indices of every batch; raises after ``crash_after`` batches
    (an interrupted run)."""

    def __init__(self, crash_after=None):
        self.seen, self.crash_after = [], crash_after

    def __call__(self, model, batch):
        x, y, idx = batch
        if self.crash_after is not None and len(self.seen) == self.crash_after:
            raise KeyboardInterrupt("simulated interruption")
        self.seen.append(idx.tolist())
        return F.cross_entropy(model(x), y)


def _fit(model, grad_accum, loss_fn=None, **kw):
    opt, sched = _optimizer(model)
    batches = ShardedBatches(*_data(), batch_size=BATCH, grad_accum=grad_accum, seed=0)
    hist = train.fit(model, batches, loss_fn or _Recorder(), opt, steps=STEPS, scheduler=sched,
                     max_norm=1.0, grad_accum=grad_accum, progress=False, **kw)
    return hist, model


def _reference_run(steps=STEPS, batch_size=BATCH):
    """One process, one global batch per step, written out by hand: the rows of step s are
    ``ShardedBatches.global_indices`` for its pass and position, as a single world would take them.
    Returns (losses, parameters, the rows of each step)."""
    x, y, _ = _data()
    model = _model()
    opt, sched = _optimizer(model)
    order = ShardedBatches(x, batch_size=batch_size, seed=0, rank=0, world_size=1)
    per_pass = N // batch_size
    losses, rows = [], []
    for s in range(steps):
        idx = order.global_indices(s // per_pass, s % per_pass)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        rows.append(sorted(idx.tolist()))
    return torch.tensor(losses), [p.detach() for p in model.parameters()], rows


def _params(model):
    return [p.detach() for p in distributed.unwrap_model(model).parameters()]


def _assert_params_close(actual, expected, **tol):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **tol)


# ---------------------------------------------------------------------------------------------
# ShardedBatches: one seeded order for every process, disjoint shards, a state to resume from
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grad_accum", [1, 2])
def test_shards_are_disjoint_and_make_up_the_global_batch(grad_accum):
    x, y, idx = _data()
    whole = list(ShardedBatches(idx, batch_size=BATCH, seed=3, rank=0, world_size=1))
    shards = [list(ShardedBatches(idx, batch_size=BATCH, grad_accum=grad_accum, seed=3, rank=r, world_size=4))
              for r in range(4)]
    assert len(whole) == N // BATCH and all(len(s) == grad_accum * len(whole) for s in shards)
    for b, (batch,) in enumerate(whole):
        parts = [shards[r][grad_accum * b + m][0] for m in range(grad_accum) for r in range(4)]
        assert all(p.numel() == BATCH // (4 * grad_accum) for p in parts)
        assert sorted(torch.cat(parts).tolist()) == sorted(batch.tolist())          # disjoint, complete
        torch.testing.assert_close(torch.cat(parts), batch, rtol=0, atol=0)       # contiguous slices
    seen = torch.cat([b for (b,) in whole])
    assert seen.unique().numel() == seen.numel() == (N // BATCH) * BATCH             # a pass repeats no row
    rows = ShardedBatches(x, y, batch_size=BATCH, seed=3, rank=1, world_size=2)
    xb, yb = next(iter(rows))
    ib = whole[0][0][BATCH // 2:]
    torch.testing.assert_close(xb, x[ib])
    torch.testing.assert_close(yb, y[ib])


def test_sharded_batches_reshuffle_per_epoch_and_resume_from_their_state():
    (idx,) = _data()[2:]
    batches = ShardedBatches(idx, batch_size=BATCH, seed=0, rank=0, world_size=1)
    first, second = [b.tolist() for (b,) in batches], [b.tolist() for (b,) in batches]
    assert first != second and batches.state_dict()["epoch"] == 1
    again = ShardedBatches(idx, batch_size=BATCH, seed=0, rank=0, world_size=1)
    it = iter(again)
    next(it)
    state = again.state_dict()
    assert state == {"epoch": 0, "position": 1, "seed": 0, "batch_size": BATCH}
    resumed = ShardedBatches(idx, batch_size=BATCH, seed=0, rank=0, world_size=1)
    resumed.load_state_dict(state)
    assert [b.tolist() for (b,) in resumed] + [b.tolist() for (b,) in resumed] == first[1:] + second
    with pytest.raises(ValueError, match="seed=1 but these have seed=0"):
        resumed.load_state_dict({**state, "seed": 1})


def test_sharded_batches_bad_input():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match=r"batch_size \(the global batch, 6\) must be divisible by grad_accum x "
                                         r"processes = 2 x 2"):
        ShardedBatches(x, batch_size=6, grad_accum=2, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\); got 2"):
        ShardedBatches(x, batch_size=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ShardedBatches(x, batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size \(12\) must be at most the number of rows \(10\)"):
        ShardedBatches(x, batch_size=12)
    with pytest.raises(ValueError, match="tensors\\[1\\] must have 10 rows"):
        ShardedBatches(x, torch.zeros(9), batch_size=2)


def test_single_process_context_without_torchrun(monkeypatch):
    for name in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    ctx = distributed.init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main) == (0, 1, None, True)
    model = _model()
    assert distributed.wrap_model(model, ctx) is model and distributed.unwrap_model(model) is model
    value = torch.tensor(2.5)
    assert distributed.all_mean(value) is value and distributed.all_gather_object({"a": 1}) == [{"a": 1}]


# ---------------------------------------------------------------------------------------------
# One process: gradient accumulation and resuming, against the hand-written reference
# ---------------------------------------------------------------------------------------------

def test_fit_over_sharded_batches_matches_the_hand_written_loop():
    ref_losses, ref_params, ref_rows = _reference_run()
    recorder = _Recorder()
    hist, model = _fit(_model(), 1, recorder)
    assert [sorted(r) for r in recorder.seen] == ref_rows
    torch.testing.assert_close(torch.tensor(hist.loss), ref_losses, rtol=1e-6, atol=1e-6)
    _assert_params_close(_params(model), ref_params, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("grad_accum", [2, 4])
def test_grad_accumulation_of_k_batches_matches_one_batch_k_times_larger(grad_accum):
    """k batches of B/k rows per step: the same rows, losses and parameters as one batch of B."""
    ref_losses, ref_params, ref_rows = _reference_run()
    recorder = _Recorder()
    hist, model = _fit(_model(), grad_accum, recorder)
    assert len(recorder.seen) == STEPS * grad_accum and all(len(r) == BATCH // grad_accum for r in recorder.seen)
    steps_rows = [sorted(sum(recorder.seen[s * grad_accum:(s + 1) * grad_accum], [])) for s in range(STEPS)]
    assert steps_rows == ref_rows
    torch.testing.assert_close(torch.tensor(hist.loss), ref_losses, rtol=1e-5, atol=1e-6)
    _assert_params_close(_params(model), ref_params, rtol=1e-5, atol=1e-6)
    # Without dividing each batch's loss by k the step would see k times the gradient:
    hist_sum, _ = _fit(_model(), grad_accum,
                       lambda m, b: grad_accum * F.cross_entropy(m(b[0]), b[1]))
    assert abs(hist_sum.grad_norm[0] - grad_accum * hist.grad_norm[0]) < 1e-4 * hist.grad_norm[0]


def test_rng_state_round_trip():
    train.seed_everything(5)
    state = train.rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(2))
    train.seed_everything(6)
    train.set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert draws[:2] == again[:2]
    torch.testing.assert_close(draws[2], again[2], rtol=0, atol=0)


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    """8 steps of 2 accumulated batches with dropout, AdamW, a schedule and clipping; the run is
    interrupted in step 6, resumes from the step-4 checkpoint (mid-pass) and ends where the
    uninterrupted run ends: same losses, learning rates, gradient norms and parameters."""
    steps, every = 8, 4

    def run(loss_fn, **kw):
        model = _model(dropout=0.3)
        opt, sched = _optimizer(model)
        batches = ShardedBatches(*_data(), batch_size=BATCH, grad_accum=2, seed=0)
        train.seed_everything(1)                                  # the dropout masks
        hist = train.fit(model, batches, loss_fn, opt, steps=steps, scheduler=sched, max_norm=1.0,
                         grad_accum=2, progress=False, **kw)
        return hist, model

    whole, whole_model = run(_Recorder())
    path = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        run(_Recorder(crash_after=2 * 5 + 1), checkpoint_path=path, checkpoint_every=every)
    assert train.load_checkpoint(path, _model())["step"] == every
    recorder = _Recorder()
    torch.manual_seed(123)                                        # the checkpoint's RNG state wins
    resumed, resumed_model = run(recorder, resume_from=path, checkpoint_path=path)
    assert len(recorder.seen) == 2 * (steps - every)              # only the missing steps ran
    assert resumed.loss == whole.loss and resumed.lr == whole.lr and resumed.grad_norm == whole.grad_norm
    _assert_params_close(_params(resumed_model), _params(whole_model), rtol=0, atol=0)
    assert train.load_checkpoint(path, _model())["step"] == steps  # the final checkpoint


def test_resume_replays_batches_without_state(tmp_path):
    """A BatchIterator with its own seeded generator has no state_dict: fit re-iterates it and
    skips the batches the first run used."""
    x, y, idx = _data()

    def run(steps, **kw):
        model = _model()
        opt, sched = _optimizer(model)
        recorder = _Recorder()
        hist = train.fit(model, BatchIterator(x, y, idx, batch_size=16, generator=0), recorder, opt,
                         steps=steps, scheduler=sched, progress=False, **kw)
        return hist, model, recorder.seen

    whole, whole_model, whole_seen = run(7)
    run(3, checkpoint_path=tmp_path / "a.pt")
    resumed, resumed_model, resumed_seen = run(7, resume_from=tmp_path / "a.pt")
    assert resumed_seen == whole_seen[3:]
    assert resumed.loss == whole.loss
    _assert_params_close(_params(resumed_model), _params(whole_model), rtol=0, atol=0)


def test_fit_checkpoint_and_accumulation_bad_input(tmp_path):
    model = _model()
    opt, _ = _optimizer(model)
    batches = ShardedBatches(*_data(), batch_size=8)
    loss = _Recorder()
    with pytest.raises(ValueError, match="grad_accum must be a positive int; got 0"):
        train.fit(model, batches, loss, opt, steps=2, grad_accum=0, progress=False)
    with pytest.raises(ValueError, match="checkpoint_every was given without checkpoint_path"):
        train.fit(model, batches, loss, opt, steps=2, checkpoint_every=1, progress=False)
    with pytest.raises(ValueError, match=r"grad_accum \(4\) must equal batches.grad_accum \(1\)"):
        train.fit(model, batches, loss, opt, steps=2, grad_accum=4, progress=False)
    with pytest.raises(ValueError, match=r"14 batches must be divisible by grad_accum \(4\)"):
        train.fit(model, list(batches), loss, opt, epochs=2, grad_accum=4, progress=False)
    train.save_checkpoint(tmp_path / "plain.pt", model, opt)
    with pytest.raises(ValueError, match="was not written by fit"):
        train.fit(model, batches, loss, opt, steps=2, resume_from=tmp_path / "plain.pt", progress=False)
    train.fit(model, batches, loss, opt, steps=2, checkpoint_path=tmp_path / "two.pt", progress=False)
    with pytest.raises(ValueError, match="is at step 2, past the 1 steps asked for"):
        train.fit(model, batches, loss, opt, steps=1, resume_from=tmp_path / "two.pt", progress=False)


# ---------------------------------------------------------------------------------------------
# Two processes with gloo on CPU (torchrun), against one process over the same global batches
# ---------------------------------------------------------------------------------------------

def _torchrun(*args, timeout=180):
    """Run ``python -m torch.distributed.run --nproc-per-node 2 --standalone ARGS`` (loopback only)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for name in distributed.TORCHRUN_ENV:
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _worker(out_dir):
    """Run by torchrun in each of 2 processes: a DDP run over ShardedBatches with 2 accumulated
    batches per step, checkpointing every 3 steps; then an interrupted run resumed from its
    step-3 checkpoint. Each rank saves what it saw and where it ended to OUT_DIR/rank<r>.pt."""
    out = Path(out_dir)
    ctx = distributed.init_distributed("gloo")                     # on CPU even where there is a GPU
    assert ctx.backend == "gloo" and ctx.world_size == 2, ctx
    recorder = _Recorder()
    hist, model = _fit(distributed.wrap_model(_model(), ctx), 2, recorder,
                       checkpoint_path=out / "ddp.pt", checkpoint_every=3)
    try:
        _fit(distributed.wrap_model(_model(), ctx), 2, _Recorder(crash_after=2 * 4 + 1),
             checkpoint_path=out / "interrupted.pt", checkpoint_every=3)
    except KeyboardInterrupt:
        pass
    resumed, resumed_model = _fit(distributed.wrap_model(_model(), ctx), 2,
                                  resume_from=out / "interrupted.pt")
    torch.save({"seen": recorder.seen, "loss": hist.loss, "params": _params(model),
                "resumed_loss": resumed.loss, "resumed_params": _params(resumed_model)},
               out / f"rank{ctx.rank}.pt")
    distributed.shutdown()


def test_two_processes_match_one_process_over_the_same_global_batches(tmp_path):
    _torchrun(Path(__file__), tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    ref_losses, ref_params, ref_rows = _reference_run()

    # Each rank saw 4 rows per batch, 2 batches per step; the ranks' rows are disjoint and together
    # are exactly the global batch the single process took at that step.
    for r in ranks:
        assert len(r["seen"]) == 2 * STEPS and all(len(rows) == BATCH // 4 for rows in r["seen"])
    for s in range(STEPS):
        per_rank = [sum(r["seen"][2 * s:2 * s + 2], []) for r in ranks]
        assert not set(per_rank[0]) & set(per_rank[1]), f"step {s}: both ranks saw rows {set(per_rank[0]) & set(per_rank[1])}"
        assert sorted(per_rank[0] + per_rank[1]) == ref_rows[s], f"step {s}: the ranks' rows are not the global batch"

    # The loss each rank records is the mean over both; the copies stay equal; both match one process.
    assert ranks[0]["loss"] == ranks[1]["loss"]
    _assert_params_close(ranks[0]["params"], ranks[1]["params"], rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(ranks[0]["loss"]), ref_losses, **DDP_TOL)
    _assert_params_close(ranks[0]["params"], ref_params, **DDP_TOL)

    # The checkpoint rank 0 wrote holds the plain model, both ranks' RNG states and the history.
    model = _model()
    info = train.load_checkpoint(tmp_path / "ddp.pt", model)
    assert info["step"] == STEPS and len(info["rng"]) == 2 and info["history"]["loss"] == ranks[0]["loss"]
    _assert_params_close(_params(model), ranks[0]["params"], rtol=0, atol=0)

    # Interrupted in step 5 and resumed from the step-3 checkpoint: the same run as the uninterrupted one.
    for r in ranks:
        assert r["resumed_loss"] == r["loss"]
        _assert_params_close(r["resumed_params"], r["params"], rtol=0, atol=0)


CLI = ["-m", "transformer_ref.train", "--task", "shapes", "--steps", "6", "--batch-size", "32",
       "--num-examples", "256", "--d-model", "16", "--num-layers", "1", "--d-ff", "32", "--warmup-steps", "2",
       "--no-progress", "--log-every", "3", "--device", "cpu"]


def test_command_line_under_torchrun_matches_one_process(tmp_path, capsys):
    """The command line a user runs: 2 processes x 1 batch of 16 rows vs 1 process x 2 accumulated
    batches of 16 rows, the same global batch of 32."""
    proc = _torchrun(*CLI, "--checkpoint", tmp_path / "ddp.pt")
    assert proc.stdout.count("shapes step 3/6") == 1, proc.stdout          # rank 0 logs, rank 1 does not
    assert "2 process(es) (gloo, cpu); global batch 32 = 2 x 1 accumulation x 16 rows" in proc.stdout
    history = train.main([*CLI[2:], "--grad-accum", "2", "--checkpoint", str(tmp_path / "one.pt")])
    assert "1 process(es) (no process group, cpu); global batch 32 = 1 x 2 accumulation x 16 rows" in capsys.readouterr().out
    states = [torch.load(tmp_path / name, weights_only=True) for name in ("ddp.pt", "one.pt")]
    assert states[1]["extra"]["history"]["loss"] == history.loss
    torch.testing.assert_close(torch.tensor(states[0]["extra"]["history"]["loss"]), torch.tensor(history.loss),
                               **DDP_TOL)
    assert states[0]["model"].keys() == states[1]["model"].keys()
    for name, value in states[1]["model"].items():
        torch.testing.assert_close(states[0]["model"][name], value, **DDP_TOL, msg=lambda m, n=name: f"{n}: {m}")


if __name__ == "__main__":
    _worker(sys.argv[1])
