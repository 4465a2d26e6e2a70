"""Fault injection for the crash-safety tests (never set in normal use).

``VSSM_FAULT`` holds comma-separated triggers; the process kills itself with SIGKILL (no clean-up, no flush,
exactly like an OOM kill or a pulled plug) when one fires:

- ``kill-at-step=N``: at the start of optimizer step N (0-based global step), i.e. mid-epoch;
- ``kill-in-save=N``: during the N-th checkpoint write of this process (1-based), after half of the file's
  bytes have reached the temporary file (so a half-written file is left behind).
"""
from __future__ import annotations

import os
import signal
from typing import Dict, Optional

_SAVES = 0


def _triggers() -> Dict[str, int]:
    spec = os.environ.get("VSSM_FAULT", "")
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, value = item.partition("=")
        out[name] = int(value)
    return out


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_kill_at_step(global_step: int) -> None:
    if _triggers().get("kill-at-step") == global_step:
        die()


def next_save_kill_offset(total_bytes: int) -> Optional[int]:
    """Count a checkpoint write; return the byte offset at which to die during it, or None."""
    global _SAVES
    _SAVES += 1
    if _triggers().get("kill-in-save") == _SAVES:
        return max(1, total_bytes // 2)
    return None
