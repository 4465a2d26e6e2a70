"""Fitting a training run to a wall-clock budget (``vssm train --time-budget MINUTES``).

A fixed epoch count fits a time limit only as well as the speed is guessed beforehand, and a host's speed moves
(other jobs, clocks, a cold start). With a budget the run measures itself instead: every log interval it works out
how many steps (at most ``--epochs`` epochs' worth) fit in the time left, from the seconds per step measured in the
current epoch and the mean time an epoch end takes (evaluation, checkpoint), counting an epoch end after every epoch
it finishes and after the last one, which may be partial. The cosine schedule follows the plan: after the warm-up
it runs over a position ``pos`` in ``[0, D]`` (``D``: the scheduler's decay length for ``--epochs``) that moves
linearly from its value when the plan last changed to ``D`` at the planned end. So a run ends annealed, close to
its budget, whatever the host's speed.

- While the plan does not change, ``pos`` is exactly the step count after the warm-up, so a budget that never binds
  gives the run of a plain ``--epochs`` schedule, and the lr never jumps when the plan changes (only its slope does).
- The first log window of a process is not used to plan: it holds start-up costs (compilation, allocations). The
  seconds per step are a moving average over about the last ``SMOOTHING_SECONDS`` of training, so that the jitter of
  short windows (a fast model logs every second) does not swing the plan, while a host that slows down for good is
  followed within a minute or two.
- The state (time spent, the plan) is saved in checkpoints, so a resumed run keeps the budget of the whole run; the
  time between the last checkpoint and a crash is not counted. A budgeted run depends on the measured time, so it
  is not bit-identical to a rerun.
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional

__all__ = ["TimeBudget", "clock", "SMOOTHING_SECONDS"]

clock = time.perf_counter  # the budget's time source (tests substitute a simulated one)
SMOOTHING_SECONDS = 30.0  # the horizon of the moving average of the seconds per step


class TimeBudget:
    """The plan of a run with a time budget: the step it ends at, and the schedule position of every step.

    ``decay_steps`` is the cosine scheduler's length after the warm-up for ``max_epochs`` (its ``t_initial``);
    :meth:`updates` maps a global step to the scheduler's ``num_updates``.
    """

    def __init__(self, seconds: float, max_epochs: int, steps_per_epoch: int, warmup_steps: int, decay_steps: int):
        if not seconds > 0:
            raise ValueError(f"the time budget must be positive, got {seconds!r} seconds")
        self.seconds = float(seconds)
        self.max_epochs = int(max_epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)
        self.end_step = self.max_epochs * self.steps_per_epoch  # the plan: training ends before this global step
        self.anchor_step = self.warmup_steps  # the plan's line starts at (anchor_step, anchor_pos)
        self.anchor_pos = 0.0
        self.spent = 0.0  # seconds of the processes before this one
        self.overhead_sum = 0.0  # seconds spent at epoch ends (evaluation, checkpoint), and how many
        self.overhead_count = 0
        self.step_seconds: Optional[float] = None  # the moving average (this process's; not saved)
        self._since: Optional[float] = None

    # time
    def start(self) -> None:
        """Start counting this process's time (at the start of the training loop)."""
        self._since = clock()

    def elapsed(self) -> float:
        """Seconds of the budget used so far, earlier processes included."""
        return self.spent + (clock() - self._since if self._since is not None else 0.0)

    def add_epoch_overhead(self, seconds: float) -> None:
        self.overhead_sum += max(0.0, float(seconds))
        self.overhead_count += 1

    def observe(self, seconds: float, steps: int) -> float:
        """Fold ``steps`` training steps that took ``seconds`` into the moving average of the seconds per step (a
        stretch weighs by its length against ``SMOOTHING_SECONDS``) and return the average."""
        rate = seconds / max(1, steps)
        if self.step_seconds is None:
            self.step_seconds = rate
        else:
            self.step_seconds += min(1.0, seconds / SMOOTHING_SECONDS) * (rate - self.step_seconds)
        return self.step_seconds

    @property
    def epoch_overhead(self) -> float:
        return self.overhead_sum / self.overhead_count if self.overhead_count else 0.0

    # the plan
    def position(self, global_step: int) -> float:
        """Cosine position (0..decay_steps) of ``global_step`` after the warm-up, on the current plan."""
        if global_step <= self.anchor_step:
            return self.anchor_pos
        span = self.end_step - self.anchor_step
        if span <= 0:
            return self.anchor_pos
        pos = self.anchor_pos + (global_step - self.anchor_step) * (self.decay_steps - self.anchor_pos) / span
        return min(pos, float(self.decay_steps))

    def updates(self, global_step: int) -> float:
        """The scheduler's ``num_updates`` for ``global_step``: the step itself in the warm-up, then the plan's."""
        if global_step < self.warmup_steps:
            return float(global_step)
        return self.warmup_steps + self.position(global_step)

    def fit(self, step_seconds: float, overhead_seconds: float, left_seconds: float, global_step: int) -> int:
        """The global step to end at: the most steps from ``global_step`` (at most to ``max_epochs``) that, with an
        epoch end after each epoch they finish and after the last one, take at most ``left_seconds``."""
        cap = self.max_epochs * self.steps_per_epoch
        if step_seconds <= 0:
            return cap
        into = global_step % self.steps_per_epoch  # steps done in the current epoch
        pending = 1 if global_step > 0 and into == 0 else 0  # the epoch just finished has its end still to come
        best, k = 0, 1  # 0: stop now
        while (k - 1) * self.steps_per_epoch - into < cap - global_step:
            # between lo (excluded) and hi more steps, k more epoch ends are due
            lo, hi = (k - 1) * self.steps_per_epoch - into, min(k * self.steps_per_epoch - into, cap - global_step)
            fits = math.floor((left_seconds - (pending + k) * overhead_seconds) / step_seconds)
            if fits <= lo:
                break
            best, k = min(hi, fits), k + 1
        return global_step + best

    def replan(self, global_step: int, step_seconds: float, elapsed: Optional[float] = None,
               overhead_seconds: Optional[float] = None) -> Optional[int]:
        """Remake the plan at ``global_step`` (the next step to run); returns the previous end step when the plan
        changed, else None. ``elapsed`` / ``overhead_seconds`` default to this budget's own (a distributed run
        passes the values averaged over its processes, so that every process makes the same plan)."""
        elapsed = self.elapsed() if elapsed is None else elapsed
        overhead = self.epoch_overhead if overhead_seconds is None else overhead_seconds
        end = self.fit(step_seconds, overhead, self.seconds - elapsed, global_step)
        if end == self.end_step:
            return None
        anchor = max(global_step, self.warmup_steps)
        self.anchor_pos, self.anchor_step = self.position(anchor), anchor
        previous, self.end_step = self.end_step, end
        return previous

    def is_done(self, global_step: int) -> bool:
        """Whether the plan ends at or before ``global_step``."""
        return global_step >= self.end_step

    @property
    def epochs(self) -> int:
        """Epochs the plan begins (its last may be partial)."""
        return -(-self.end_step // self.steps_per_epoch)

    # checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return {"spent": self.elapsed(), "end_step": self.end_step, "anchor_step": self.anchor_step,
                "anchor_pos": self.anchor_pos, "overhead_sum": self.overhead_sum,
                "overhead_count": self.overhead_count}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.spent = float(state["spent"])
        self.end_step = min(int(state["end_step"]), self.max_epochs * self.steps_per_epoch)
        self.anchor_step, self.anchor_pos = int(state["anchor_step"]), float(state["anchor_pos"])
        self.overhead_sum, self.overhead_count = float(state["overhead_sum"]), int(state["overhead_count"])
        self.step_seconds, self._since = None, None
