"""Fitting a training run to a wall-clock budget (``vssm train --time-budget MINUTES``).

A fixed epoch count fits a time limit only as well as the speed is guessed beforehand, and a host's speed moves
(other jobs, clocks, a cold start). With a budget the run measures itself instead: every log interval it works out
how many whole epochs (at most ``--epochs``) fit in the time left, from the seconds per step measured in the
current epoch and the mean time an epoch end takes (evaluation, checkpoint). The cosine schedule follows the plan:
after the warm-up it runs over a position ``pos`` in ``[0, D]`` (``D``: the scheduler's decay length for
``--epochs``) that moves from its value when the plan last changed to ``D`` at the last step of the planned last
epoch. So a run ends at an epoch end, annealed, close to its budget, whatever the host's speed.

- While the plan does not change, ``pos`` is exactly the step count after the warm-up, so a budget that never binds
  gives the run of a plain ``--epochs`` schedule, and the lr never jumps when the plan changes (only its slope does).
- An epoch once started is finished: a host that slows down within the last epoch overshoots the budget by that
  slowdown. A plan shortened at the very end of an epoch ends there, before the schedule has fully decayed.
- The first log window of a process is not used to plan: it holds start-up costs (compilation, allocations).
- The state (time spent, the plan) is saved in checkpoints, so a resumed run keeps the budget of the whole run. A
  budgeted run depends on the measured time, so it is not bit-identical to a rerun.
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional

__all__ = ["TimeBudget", "clock"]

clock = time.perf_counter  # the budget's time source (tests substitute a simulated one)


class TimeBudget:
    """The plan of a run with a time budget: the last epoch, and the schedule position of every step.

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
        self.end_epoch = self.max_epochs
        self.anchor_step = self.warmup_steps  # the plan's line starts at (anchor_step, anchor_pos)
        self.anchor_pos = 0.0
        self.spent = 0.0  # seconds of the processes before this one
        self.overhead_sum = 0.0  # seconds spent at epoch ends (evaluation, checkpoint), and how many
        self.overhead_count = 0
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

    @property
    def epoch_overhead(self) -> float:
        return self.overhead_sum / self.overhead_count if self.overhead_count else 0.0

    # the plan
    def position(self, global_step: int) -> float:
        """Cosine position (0..decay_steps) of ``global_step`` after the warm-up, on the current plan."""
        if global_step <= self.anchor_step:
            return self.anchor_pos
        span = self.end_epoch * self.steps_per_epoch - self.anchor_step
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
        """Whole epochs that end within ``left_seconds`` from ``global_step`` (the current epoch counts, however
        long): the planned last epoch (1-based), at most ``max_epochs``."""
        epoch, done = divmod(global_step, self.steps_per_epoch)
        if done == 0 and global_step > 0:  # at an epoch boundary: the epoch just finished is the current one
            epoch, done = epoch - 1, self.steps_per_epoch
        finish_current = (self.steps_per_epoch - done) * step_seconds + overhead_seconds
        per_epoch = self.steps_per_epoch * step_seconds + overhead_seconds
        more = 0
        if per_epoch > 0 and left_seconds > finish_current:
            more = int(math.floor((left_seconds - finish_current) / per_epoch))
        elif per_epoch <= 0:
            more = self.max_epochs
        return max(epoch + 1, min(self.max_epochs, epoch + 1 + more))

    def replan(self, global_step: int, step_seconds: float, elapsed: Optional[float] = None,
               overhead_seconds: Optional[float] = None) -> Optional[int]:
        """Remake the plan at ``global_step`` (the next step to run); returns the previous last epoch when the
        plan changed, else None. ``elapsed`` / ``overhead_seconds`` default to this budget's own (a distributed run
        passes the values averaged over its processes, so that every process makes the same plan)."""
        elapsed = self.elapsed() if elapsed is None else elapsed
        overhead = self.epoch_overhead if overhead_seconds is None else overhead_seconds
        end = self.fit(step_seconds, overhead, self.seconds - elapsed, global_step)
        if end == self.end_epoch:
            return None
        anchor = max(global_step, self.warmup_steps)
        self.anchor_pos, self.anchor_step = self.position(anchor), anchor
        previous, self.end_epoch = self.end_epoch, end
        return previous

    def is_last(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) is the plan's last."""
        return epoch + 1 >= self.end_epoch

    # checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return {"spent": self.elapsed(), "end_epoch": self.end_epoch, "anchor_step": self.anchor_step,
                "anchor_pos": self.anchor_pos, "overhead_sum": self.overhead_sum,
                "overhead_count": self.overhead_count}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.spent = float(state["spent"])
        self.end_epoch = min(int(state["end_epoch"]), self.max_epochs)
        self.anchor_step, self.anchor_pos = int(state["anchor_step"]), float(state["anchor_pos"])
        self.overhead_sum, self.overhead_count = float(state["overhead_sum"]), int(state["overhead_count"])
        self._since = None
