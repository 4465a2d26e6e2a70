"""`vssm train --time-budget`: the epochs and the cosine schedule fitted to a wall-clock budget as the run measures
itself (vssm/train/budget.py). The plan is checked on its own, then in real training runs driven by a simulated
clock (a fixed time per step and per evaluation), so the expected plan can be worked out by hand."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from conftest import needs_data, run_vssm
from vssm.train import budget as time_budget
from vssm.train.budget import TimeBudget



# ---- the plan on its own ----------------------------------------------------------------------------------------


def test_a_budget_that_never_binds_is_the_step_schedule():
    b = TimeBudget(1e9, max_epochs=5, steps_per_epoch=10, warmup_steps=7, decay_steps=43)
    assert [b.updates(g) for g in range(50)] == list(range(50))
    for g in (9, 20, 33):
        assert b.replan(g, step_seconds=1e-3, elapsed=0.0, overhead_seconds=0.0) is None
    assert [b.updates(g) for g in range(50)] == list(range(50))  # exactly, not just close
    assert b.end_step == 50 and b.epochs == 5 and not b.is_done(49) and b.is_done(50)


def test_the_plan_counts_an_epoch_end_after_every_epoch_and_after_the_last():
    b = TimeBudget(100, max_epochs=8, steps_per_epoch=10, warmup_steps=0, decay_steps=80)
    # 1 s per step, 2 s per epoch end: 12 s per whole epoch
    assert b.fit(1.0, 2.0, left_seconds=48, global_step=0) == 40  # 4 x 12
    assert b.fit(1.0, 2.0, left_seconds=47, global_step=0) == 39  # 3 x 12 + 9 steps and their epoch end
    assert b.fit(1.0, 2.0, left_seconds=5, global_step=0) == 3
    assert b.fit(1.0, 2.0, left_seconds=-30, global_step=14) == 14  # over: stop now
    assert b.fit(1.0, 2.0, left_seconds=8, global_step=14) == 20  # the 6 steps left in the epoch and its end
    assert b.fit(1.0, 2.0, left_seconds=20, global_step=14) == 30  # then one more epoch: 6 + 2 + 10 + 2
    assert b.fit(1.0, 2.0, left_seconds=20, global_step=20) == 34  # at an epoch boundary its end is still due
    assert b.fit(1.0, 2.0, left_seconds=1e6, global_step=0) == 80  # at most --epochs
    assert b.fit(1.0, 0.0, left_seconds=1e6, global_step=75) == 80


def test_replanning_keeps_the_schedule_continuous_and_ends_fully_decayed():
    """Speed changes move the plan several times; the position never jumps, never goes back, and the planned last
    step is one step short of the full decay, as in the plain schedule."""
    steps, warmup, cap = 10, 4, 12
    decay = cap * steps - warmup
    b = TimeBudget(60, max_epochs=cap, steps_per_epoch=steps, warmup_steps=warmup, decay_steps=decay)
    now, positions, ends = 0.0, [], set()
    g = 0
    while g < b.end_step:
        positions.append(b.updates(g) - warmup if g >= warmup else 0.0)
        now += 0.5 if g < 25 else 0.9  # the host slows down
        g += 1
        if g % 3 == 0:
            b.replan(g, 0.5 if g < 25 else 0.9, elapsed=now, overhead_seconds=0.0)
            ends.add(b.end_step)
    assert len(ends) >= 2  # the plan did change
    diffs = [b_ - a for a, b_ in zip(positions, positions[1:])]
    assert min(diffs) >= 0
    assert max(diffs[warmup:]) < 3  # a change of slope, never a jump
    last_slope = positions[-1] - positions[-2]
    assert positions[-1] + last_slope == pytest.approx(decay, abs=1e-9)
    assert 60 - 0.9 < now <= 60  # the budget, to a step


def test_the_seconds_per_step_are_smoothed_but_follow_a_lasting_change():
    """Windows of 1 s (a fast model) alternating between 0.8 and 1.2 ms per step: once the first window (1.2 ms)
    has faded, over three horizons, the average stays within 3% of 1 ms; when the host turns 2x slower for good,
    the average is within 5% of it after two minutes of windows."""
    from vssm.train.budget import SMOOTHING_SECONDS

    b = TimeBudget(900, max_epochs=100, steps_per_epoch=100, warmup_steps=0, decay_steps=10000)
    estimates = [b.observe(1.0, int(1000 / (0.8 if i % 2 else 1.2))) for i in range(200)]
    assert all(abs(e / 1e-3 - 1) < 0.03 for e in estimates[int(3 * SMOOTHING_SECONDS):])
    for _ in range(120):
        slow = b.observe(1.0, 500)
    assert slow == pytest.approx(2e-3, rel=0.05)


def test_replan_plans_from_the_measures_averaged_over_processes(monkeypatch):
    """The engine's replan averages (elapsed, seconds per step, epoch-end seconds) over the processes before
    planning, so every process plans the same end whatever its own clock says."""
    from types import SimpleNamespace

    from vssm.train import engine

    other_rank = torch.tensor([40.0, 3.0, 6.0], dtype=torch.float64)  # elapsed, s per step, s per epoch end
    monkeypatch.setattr(engine, "all_reduce_sum", lambda t, dist: t + other_rank)
    now = [100.0]
    monkeypatch.setattr(time_budget, "clock", lambda: now[0])
    b = TimeBudget(200, max_epochs=50, steps_per_epoch=10, warmup_steps=0, decay_steps=500)
    b.start()
    b.add_epoch_overhead(2.0)
    now[0] = 120.0  # this process: 20 s used, the last 5 steps took 5 s
    engine._replan(b, (115.0, 0), 5, 15, 10, 0, torch.device("cpu"), SimpleNamespace(world_size=2), lambda m: None)
    averaged = TimeBudget(200, 50, 10, 0, 500).fit(2.0, 4.0, left_seconds=200 - 30, global_step=15)
    local = TimeBudget(200, 50, 10, 0, 500).fit(1.0, 2.0, left_seconds=200 - 20, global_step=15)
    assert b.end_step == averaged != local


def test_budget_state_round_trips():
    b = TimeBudget(100, max_epochs=6, steps_per_epoch=10, warmup_steps=3, decay_steps=57)
    b.add_epoch_overhead(2.0)
    b.replan(14, 1.5, elapsed=30.0)
    state = b.state_dict()
    c = TimeBudget(100, max_epochs=6, steps_per_epoch=10, warmup_steps=3, decay_steps=57)
    c.load_state_dict(state)
    assert [c.updates(g) for g in range(60)] == [b.updates(g) for g in range(60)]
    assert c.end_step == b.end_step < 60 and c.epoch_overhead == 2.0


def test_bad_budgets_are_refused(capsys):
    from vssm.cli import main

    with pytest.raises(ValueError, match="must be positive"):
        TimeBudget(0, 3, 10, 0, 30)
    assert main(["train", "--model", "vmamba_femto", "--time-budget", "0"]) == 2
    assert "--time-budget is in minutes and must be > 0" in capsys.readouterr().err


# ---- in training, with a simulated clock ------------------------------------------------------------------------

TINY = ["--model", "vmamba_femto", "--model-kwargs", '{"dims": [16, 32, 64], "depths": [1, 1, 1]}',
        "--img-size", "28", "--train-subset", "256", "--val-subset", "100", "--batch-size", "32",
        "--warmup-epochs", "0.5", "--lr-base-batch", "0", "--no-tensorboard", "--no-plot", "--progress", "log",
        "--log-interval", "4", "--deterministic", "--seed", "5", "--threads", "1", "--amp", "none"]
STEP_S, EVAL_S = 1.0, 2.0  # simulated seconds per training step and per evaluation (two per epoch: model, EMA)


@pytest.fixture
def simulated_clock(monkeypatch):
    """The budget's clock advances STEP_S at every training step and EVAL_S at every evaluation, nothing else."""
    from vssm.train import engine, faults

    now = [1000.0]
    real_kill, real_evaluate = faults.maybe_kill_at_step, engine.evaluate
    lrs = []

    def step(global_step):
        now[0] += STEP_S
        real_kill(global_step)

    def evaluate(*args, **kwargs):
        now[0] += EVAL_S
        return real_evaluate(*args, **kwargs)

    real_step = torch.optim.AdamW.step

    def recording_step(opt, *args, **kwargs):
        lrs.append(opt.param_groups[0]["lr"])
        return real_step(opt, *args, **kwargs)

    monkeypatch.setattr(time_budget, "clock", lambda: now[0])
    monkeypatch.setattr(faults, "maybe_kill_at_step", step)
    monkeypatch.setattr(engine, "evaluate", evaluate)
    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    return lrs


def _train(*args) -> dict:
    from vssm.cli import main

    assert main(["train", *TINY, *args]) == 0
    out = args[args.index("--output") + 1]
    return json.loads(open(os.path.join(out, "summary.json")).read())


@needs_data
def test_the_run_ends_annealed_at_the_epoch_the_budget_fits(tmp_path, simulated_clock, capsys):
    """8 steps per epoch at 1 s, two 2 s evaluations per epoch end: 12 s per epoch. A 0.6-minute budget holds 3
    epochs of the 10 allowed. The first log window of the process is not a measure; the second (step 8, no epoch
    end seen yet) plans 4.5 epochs, the first window of epoch 2 (4 s per epoch end now known) 3."""
    lrs = simulated_clock
    summary = _train("--epochs", "10", "--time-budget", "0.6", "--output", str(tmp_path / "run"))
    log = capsys.readouterr().out
    assert summary["epochs"] == 3 and [r["epoch"] for r in summary["history"]] == [1, 2, 3]
    assert summary["global_step"] == 24 and len(lrs) == 24
    assert summary["time_budget"]["used_minutes"] == pytest.approx(0.6)
    assert "the run now ends after 4.50 epochs (was 10.00)" in log and "ends after 3.00 epochs (was 4.50)" in log
    assert "Epoch 3/3:" in log
    # the lr: warm-up as planned, then a cosine whose position moves linearly between plan changes and would
    # reach the full decay one step after the last, as in the plain schedule
    lr, min_lr, warmup, decay = 1e-3 * 2, 1e-5, 4, 10 * 8 - 4
    assert lrs[:warmup] == sorted(lrs[:warmup]) and max(lrs) == pytest.approx(lr)
    pos = [decay / math.pi * math.acos(max(-1.0, min(1.0, 2 * (v - min_lr) / (lr - min_lr) - 1))) for v in lrs[warmup:]]
    slopes = [b - a for a, b in zip(pos, pos[1:])]
    assert all(s >= 0 for s in slopes)
    assert pos[-1] + slopes[-1] == pytest.approx(decay, abs=1e-3)
    assert slopes[-1] == pytest.approx((decay - pos[12 - warmup]) / (24 - 12), rel=1e-4)  # the last plan: from step 12


@needs_data
def test_an_ample_budget_is_the_plain_run(tmp_path, simulated_clock):
    """A budget that the run never comes near changes nothing: same lr at every step, same weights."""
    from safetensors.torch import load_file

    lrs = simulated_clock
    plain = _train("--epochs", "2", "--limit-train-batches", "6", "--output", str(tmp_path / "plain"))
    plain_lrs = list(lrs)
    lrs.clear()
    budgeted = _train("--epochs", "2", "--limit-train-batches", "6", "--time-budget", "1000",
                      "--output", str(tmp_path / "budget"))
    assert lrs == plain_lrs
    assert budgeted["final"] == plain["final"] and budgeted["time_budget"]["epochs"] == 2
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("plain", "budget"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_data
def test_a_resumed_budgeted_run_keeps_its_plan_and_time(tmp_path, simulated_clock, monkeypatch):
    """Interrupted in its last epoch (the plan settled: 3 epochs) and resumed from the checkpoint of step 18: the
    budget's spent time and plan come from the checkpoint, and the run ends exactly as the uninterrupted one."""
    from safetensors.torch import load_file

    from vssm.train import faults

    args = ["--epochs", "10", "--time-budget", "0.6", "--save-every-steps", "3"]
    whole = _train(*args, "--output", str(tmp_path / "whole"))

    advance = faults.maybe_kill_at_step

    class Crash(Exception):
        pass

    def crash_at_20(global_step):
        advance(global_step)
        if global_step == 20:
            raise Crash()

    monkeypatch.setattr(faults, "maybe_kill_at_step", crash_at_20)
    with pytest.raises(Crash):
        _train(*args, "--output", str(tmp_path / "run"))
    monkeypatch.setattr(faults, "maybe_kill_at_step", advance)
    resumed = _train(*args, "--resume", "auto", "--output", str(tmp_path / "run"))
    assert resumed["epochs"] == whole["epochs"] == 3 and resumed["global_step"] == 24
    assert resumed["final"] == whole["final"]
    assert resumed["time_budget"]["used_minutes"] == pytest.approx(whole["time_budget"]["used_minutes"])
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("whole", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_data
def test_the_demo_fits_its_epochs_to_its_minutes(tmp_path, simulated_clock, capsys, monkeypatch):
    """`vssm demo` trains under a time budget of --minutes: 4 steps (256 images) of 1 s and two 2 s evaluations per
    epoch make 8 s per epoch, so 0.4 minutes hold 3 of the 6 epochs allowed; then it evaluates the weights. (The
    evaluations during training use 100 images.)"""
    from vssm.cli import main
    from vssm.train.config import PRESETS

    monkeypatch.setitem(PRESETS["fashion-mnist-cpu"], "val_subset", 100)

    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--train-subset", "256", "--minutes", "0.4", "--max-epochs", "6",
                 "--threads", "2", "--progress", "log"]) == 0
    log = capsys.readouterr().out
    assert "for 0.4 minutes" in log and "the run now ends after 3.00 epochs (was 6.00)" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["time_budget"] == dict(minutes=0.4, used_minutes=pytest.approx(0.4),
                                                                     max_epochs=6, epochs=3.0)
    assert json.loads((out / "eval.json").read_text())["n_images"] == 10000
    assert "vssm demo finished" in log and "3 epochs" in log


@needs_data
def test_the_last_epoch_may_be_partial_and_the_finished_run_resumes_to_its_end(tmp_path, simulated_clock):
    """0.55 minutes: 2 whole epochs (24 s), then 5 steps and their epoch end (9 s). The run ends mid-epoch with the
    lr fully decayed but one step; its last checkpoint holds that position, so --resume auto of the finished run
    reads it, trains nothing and ends with the same result."""
    lrs = simulated_clock
    args = ["--epochs", "10", "--time-budget", "0.55", "--output", str(tmp_path / "run")]
    summary = _train(*args)
    assert summary["global_step"] == 21 and summary["time_budget"]["epochs"] == pytest.approx(21 / 8, abs=1e-3)
    assert [r["global_step"] for r in summary["history"]] == [8, 16, 21] and summary["epochs"] == 3
    assert summary["time_budget"]["used_minutes"] == pytest.approx(0.55)
    assert lrs[-1] < 1e-4 and len(lrs) == 21
    lrs.clear()
    again = _train(*args, "--resume", "auto")
    assert lrs == [] and again["final"] == summary["final"] and again["global_step"] == 21


@needs_data
def test_ddp_processes_make_the_same_plan(tmp_path):
    """torchrun, 2 gloo processes under a real 0.25-minute budget: the run replans every 2 steps across both
    processes, ends near its budget, and rank 0's last checkpoint holds the final step. (Two processes on one host
    measure nearly the same times, so this is the end-to-end check; that they plan from the averaged measures is
    checked by test_replan_plans_from_the_measures_averaged_over_processes.)"""
    args = [a for a in TINY if a not in ("--threads", "1")]
    args[args.index("--batch-size") + 1] = "16"
    args[args.index("--log-interval") + 1] = "2"
    out = tmp_path / "ddp"
    proc = run_vssm("train", *args, "--threads", "1", "--epochs", "500", "--time-budget", "0.25", "--output", str(out),
                    nproc=2, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DDP x2 (gloo)" in proc.stdout and "time budget:" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert 1 <= summary["epochs"] < 500 and summary["global_step"] < 500 * 8
    assert summary["time_budget"]["used_minutes"] == pytest.approx(0.25, abs=0.05)
    state = torch.load(out / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert state["global_step"] == summary["global_step"] and state["world_size"] == 2
