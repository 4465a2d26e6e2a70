"""Training checkpoints that lose nothing, the exported weights, and what both record about their run.

Every file is written atomically: serialised to ``NAME.tmp-<pid>`` in the same folder, flushed, fsync'ed,
renamed over ``NAME`` with ``os.replace`` and the folder fsync'ed, so a crash at any instant leaves either the
previous file or the new one, never a mix. A training checkpoint holds the model, the EMA, optimizer, grad
scaler and scheduler states, the position (epoch, step in epoch, global step, the running sums of the epoch in
progress), the per-epoch history, the best result, the full configuration and the RNG states (python, numpy,
torch, CUDA) of every rank. Only tensors and plain containers are stored, so ``torch.load(weights_only=True)``
and :func:`vssm.load_checkpoint` read them.

Files in ``OUTPUT/checkpoints``: ``ckpt_e{epochs_done:04d}_s{global_step:09d}.pth`` (the ``keep_last`` newest
are kept), ``best.pth`` and ``last.pth`` (hard links to one of them, or copies where links are not possible).
``--resume auto`` takes the newest one that reads back completely and warns about any it has to skip.
"""
from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..checkpoint import CheckpointError, read_checkpoint
from . import faults

__all__ = [
    "FORMAT",
    "WEIGHTS_FORMAT",
    "atomic_write",
    "atomic_save",
    "atomic_link",
    "capture_rng",
    "restore_rng",
    "checkpoint_path",
    "list_checkpoints",
    "read_training_checkpoint",
    "find_resume_checkpoint",
    "prune_checkpoints",
    "export_safetensors",
    "checkpoint_metadata",
    "weights_key",
]

FORMAT = "vssm.train.checkpoint/1"
WEIGHTS_FORMAT = "vssm.weights/1"  # the metadata "format" of an exported model.safetensors
_NAME = re.compile(r"^ckpt_e(\d+)_s(\d+)\.pth$")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, os.replace, fsync folder)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    kill_at = faults.next_save_kill_offset(len(data))
    try:
        with open(tmp, "wb") as f:
            if kill_at is not None:
                f.write(data[:kill_at])
                f.flush()
                os.fsync(f.fileno())
                faults.die()
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` made atomic (see :func:`atomic_write`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def atomic_link(src: str, dst: str) -> None:
    """Make ``dst`` name the same file as ``src`` (hard link, or a copy where links fail), atomically."""
    tmp = f"{dst}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)
    _fsync_dir(os.path.dirname(os.path.abspath(dst)))


# ---- RNG states as tensors (readable with weights_only=True) ------------------------------------------------


def capture_rng(device: Optional[torch.device] = None) -> Dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "python_version": int(version),
        "python": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_cached": float(np_cached),
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: Dict[str, Any], device: Optional[torch.device] = None) -> None:
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], state["numpy_has_gauss"],
         state["numpy_cached"])
    )
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---- files -----------------------------------------------------------------------------------------------------


def checkpoint_path(folder: str, epochs_done: int, global_step: int) -> str:
    return os.path.join(folder, f"ckpt_e{epochs_done:04d}_s{global_step:09d}.pth")


def list_checkpoints(folder: str) -> List[str]:
    """Training checkpoints in ``folder``, newest (highest global step) first."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = _NAME.match(name)
        if m:
            found.append(((int(m.group(2)), int(m.group(1))), os.path.join(folder, name)))
    return [path for _, path in sorted(found, reverse=True)]


def read_training_checkpoint(path: str) -> Dict[str, Any]:
    """Read and check a vssm training checkpoint; :class:`vssm.CheckpointError` says what is wrong."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        kind = "an official or exported weights file" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path} is not a vssm training checkpoint (it looks like {kind}); --resume needs a file written by "
            f"`vssm train`. To start from weights only, use --init-checkpoint"
        )
    missing = [k for k in ("model", "optimizer", "config", "epoch", "global_step") if k not in obj]
    if missing:
        raise CheckpointError(f"training checkpoint {path} is incomplete: it lacks {missing}")
    return obj


def find_resume_checkpoint(folder: str, log: Callable[[str], None] = print) -> Tuple[Optional[str], Optional[dict]]:
    """The newest checkpoint in ``folder`` that reads back completely, skipping (with a warning) any that do not."""
    for path in list_checkpoints(folder):
        try:
            return path, read_training_checkpoint(path)
        except (CheckpointError, OSError) as err:
            msg = f"skipping unreadable checkpoint {path}: {str(err).splitlines()[0]}"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log(f"warning: {msg}")
    return None, None


def remove_stale_temp_files(folder: str) -> None:
    """Temporary files left by a process killed while writing (never complete, safe to delete)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if ".tmp-" in name:
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def prune_checkpoints(folder: str, keep_last: int, protect: Tuple[str, ...] = ()) -> None:
    """Delete all but the ``keep_last`` newest checkpoints (``best.pth`` / ``last.pth`` are links and survive)."""
    keep = set(os.path.realpath(p) for p in protect)
    for path in list_checkpoints(folder)[max(1, keep_last):]:
        if os.path.realpath(path) not in keep:
            os.remove(path)


def export_safetensors(state_dict: Dict[str, torch.Tensor], path: str, metadata: Optional[Dict[str, Any]] = None) -> None:
    """Atomically write a state_dict as safetensors; ``metadata`` values are JSON-encoded strings."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write(path, save(tensors, metadata=meta))


def checkpoint_metadata(path: str) -> Dict[str, Any]:
    """What a vssm checkpoint says about its model and data: {} for official / foreign files."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot read {path} as safetensors ({err}); the file may be truncated") from err
        if meta.get("format") != WEIGHTS_FORMAT:
            return {}
        out = {}
        for k, v in meta.items():
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:
                out[k] = v
        out["kind"] = "weights"
        return out
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        cfg = obj["config"]
        return {
            "kind": "training",
            "model": cfg.get("model"),
            "model_kwargs": cfg.get("model_kwargs") or {},
            "model_module": cfg.get("model_module"),
            "data": cfg.get("data"),
            "num_classes": cfg.get("num_classes"),
            "in_chans": cfg.get("in_chans"),
            "img_size": cfg.get("img_size"),
            "fit": cfg.get("fit"),
            "crop_pct": cfg.get("crop_pct"),
            "interpolation": cfg.get("interpolation"),
            "has_ema": obj.get("model_ema") is not None,
            "epoch": obj.get("epoch"),
            "global_step": obj.get("global_step"),
        }
    return {}


def weights_key(meta: Dict[str, Any], weights: str = "auto") -> str:
    """The entry of a checkpoint to load (:func:`vssm.load_checkpoint`'s ``key``), given its
    :func:`checkpoint_metadata`: ``weights`` auto / model / ema; auto is the EMA weights when a training run kept them,
    as its summary reports."""
    if meta.get("kind") == "weights":
        return "auto"
    named = {"model": "model", "ema": "model_ema"}.get(weights)
    if meta.get("kind") == "training":
        return named or ("model_ema" if meta.get("has_ema") else "model")
    return named or "auto"
