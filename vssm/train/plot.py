"""The curves PNG of a run: loss, accuracy and learning rate (matplotlib, Agg backend, written atomically)."""
from __future__ import annotations

import io
from typing import Any, Dict, List, Sequence

from .checkpointing import atomic_write

__all__ = ["plot_curves"]


def plot_curves(history: List[Dict[str, Any]], step_log: Sequence[Sequence[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2), dpi=100)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    steps_per_epoch = None
    if history:
        steps_per_epoch = history[0]["global_step"] / max(history[0]["epoch"], 1)
    if step_log:
        s = [r[0] / steps_per_epoch if steps_per_epoch else r[0] for r in step_log]
        ax_loss.plot(s, [r[1] for r in step_log], color="tab:blue", alpha=0.35, lw=1, label="train (per interval)")
        ax_lr.plot(s, [r[2] for r in step_log], color="tab:green")
    ep = [r["epoch"] for r in history]
    ax_loss.plot(ep, [r["train_loss"] for r in history], "o-", color="tab:blue", ms=3, label="train (epoch mean)")
    val = [r for r in history if "val_loss" in r]
    if val:
        ax_loss.plot([r["epoch"] for r in val], [r["val_loss"] for r in val], "o-", color="tab:red", ms=3, label="val")
        ax_acc.plot([r["epoch"] for r in val], [r["val_acc1"] for r in val], "o-", ms=3, label="val top-1")
        ax_acc.plot([r["epoch"] for r in val], [r["val_acc5"] for r in val], "o-", ms=3, label="val top-5")
        if "ema_val_acc1" in val[0]:
            ax_acc.plot([r["epoch"] for r in val], [r["ema_val_acc1"] for r in val], "s-", ms=3, label="EMA top-1")
        best = max(r.get("ema_val_acc1", r["val_acc1"]) for r in val)
        ax_acc.set_title(f"accuracy (best top-1 {best:.2f}%)")
    else:
        ax_acc.set_title("accuracy")
    ax_loss.set_title("loss")
    ax_lr.set_title("learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    if val:
        ax_acc.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write(path, buffer.getvalue())
