"""The training and evaluation engine behind ``vssm train`` and ``vssm eval``.

Built on timm: ``create_optimizer_v2`` (AdamW; no weight decay on norms, biases and what
``model.no_weight_decay()`` declares), ``CosineLRScheduler`` updated every step with a linear warm-up,
``Mixup`` / CutMix with ``SoftTargetCrossEntropy`` or label smoothing, ``ModelEmaV3``, ``create_transform``
(ImageFolder). One process per device under torchrun (DistributedDataParallel), a single process otherwise.
Only rank 0 writes files; metrics are summed over ranks.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import CheckpointError, load_checkpoint
from ..cuda_graphs import enable_cuda_graphs
from ..data.build import DataInfo, build_eval_loader, build_train_loader, data_info, eval_part
from . import budget as time_budget
from . import faults
from .checkpointing import (
    FORMAT,
    WEIGHTS_FORMAT,
    atomic_link,
    atomic_save,
    atomic_write,
    capture_rng,
    checkpoint_path,
    export_safetensors,
    find_resume_checkpoint,
    prune_checkpoints,
    read_training_checkpoint,
    remove_stale_temp_files,
    restore_rng,
)
from .config import TTA_MODES, default_output
from .distill import distillation_loss, load_teacher
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, cleanup_distributed, setup_distributed
from .sam import SharpnessAware

__all__ = ["build_model", "evaluate", "train", "amp_dtype", "Logger", "UsageError"]

# config keys that only affect how a run is watched or where it runs, not its result
RUN_KEYS = {"output", "resume", "overwrite", "progress", "log_interval", "tensorboard", "plot", "device", "threads", "workers",
            "eval_batch_size", "keep_last", "save_every_steps", "save_every_epochs", "limit_val_batches"}
INVOCATION_KEYS = {"stop_after_minutes", "cuda_graphs"}  # this process's own: never taken from a resumed checkpoint's config
STOPPED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by --stop-after-minutes, continue with --resume auto
# an epoch's mean train loss this many times a constant uniform guess's, ln(num_classes), means the run has diverged:
# a model starts at about ln(num_classes) and only goes down from there while it learns
DIVERGED_LOSS_RATIO = 1.5
DIVERGENCE_ADVICE = "Lower --lr (or lengthen --warmup-epochs) and keep --clip-grad on"


# ---- small helpers ---------------------------------------------------------------------------------------------


class Logger:
    """Prints on rank 0 only (to stdout, or through tqdm while a bar is open)."""

    def __init__(self, dist: DistInfo):
        self.enabled = dist.is_main
        self.bar = None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)


def amp_dtype(name: str, device: torch.device) -> Optional[torch.dtype]:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[name]


def build_model(
    name: str,
    num_classes: int,
    in_chans: int,
    img_size: Optional[int] = None,
    drop_path: Optional[float] = None,
    pretrained: bool = False,
    model_kwargs: Optional[Dict[str, Any]] = None,
    model_module: Optional[str] = None,
) -> nn.Module:
    """Any vssm or timm model by name, or one that ``model_module`` registers with timm (see
    :func:`vssm.factory.import_model_module`); ``img_size`` goes to models that take it (ViT, Swin, ...)."""
    from ..factory import create_model, import_model_module

    if model_module:
        try:
            import_model_module(model_module)
        except ValueError as err:
            raise UsageError(str(err)) from err
    kwargs = dict(model_kwargs or {})
    kwargs.update(num_classes=num_classes, in_chans=in_chans)
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    try:
        if img_size is not None and "img_size" not in kwargs:
            try:
                return create_model(name, pretrained=pretrained, img_size=img_size, **kwargs)
            except TypeError:
                pass
        return create_model(name, pretrained=pretrained, **kwargs)
    except ValueError as err:
        if "unknown model" in str(err):
            raise UsageError(f"{err}") from err
        raise
    except TypeError as err:
        raise UsageError(f"cannot build {name} with {sorted(kwargs)}: {err}") from err


def _count_topk(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> List[torch.Tensor]:
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target[:, None])
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    dist: DistInfo,
    amp: Optional[torch.dtype] = None,
    log: Optional[Callable[[str], None]] = None,
    print_freq: int = 0,
    channels_last: bool = False,
    tta: str = "none",
) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy over the whole split, summed over ranks.

    ``tta="hflip"`` scores each image by the mean of the class probabilities of the image and of its mirror image
    (test-time augmentation; the loss is the cross-entropy of that mean).

    With ``print_freq`` > 0, prints progress lines in the official log's format
    (``Test: [390/391]  Time ...  Loss ...  Acc@1 82.492 (...)  Acc@5 ...``); the caller prints the `*` line.
    """
    if tta not in TTA_MODES:
        raise UsageError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA_MODES)}")
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    n_batches = len(loader)
    t0 = t_last = time.perf_counter()
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    for idx, (x, y) in enumerate(loader):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(x)
            flipped = model(x.flip(-1)) if tta == "hflip" else None
        logits = logits.float()
        if flipped is not None:
            # log of the mean of the two probability vectors
            logits = torch.logaddexp(logits.log_softmax(-1), flipped.float().log_softmax(-1)) - math.log(2.0)
        loss = F.cross_entropy(logits, y, reduction="sum")
        top1, top5 = _count_topk(logits, y)
        batch = torch.stack([loss.double(), top1.double(), top5.double(), torch.tensor(len(y), device=device, dtype=torch.float64)])
        sums += batch
        if log is not None and print_freq and (idx % print_freq == 0 or idx == n_batches - 1):
            now = time.perf_counter()
            n = batch[3].item()
            avg = sums / sums[3].clamp(min=1)
            mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
            log(
                f"Test: [{idx}/{n_batches}]\t"
                f"Time {now - t_last:.3f} ({(now - t0) / (idx + 1):.3f})\t"
                f"Loss {batch[0].item() / n:.4f} ({avg[0].item():.4f})\t"
                f"Acc@1 {100 * batch[1].item() / n:.3f} ({100 * avg[1].item():.3f})\t"
                f"Acc@5 {100 * batch[2].item() / n:.3f} ({100 * avg[2].item():.3f})\t"
                f"Mem {mem:.0f}MB"
            )
            t_last = now
    all_reduce_sum(sums, dist)
    model.train(was_training)
    n = max(sums[3].item(), 1.0)
    return {
        "acc1": 100.0 * sums[1].item() / n,
        "acc5": 100.0 * sums[2].item() / n,
        "loss": sums[0].item() / n,
        "n_images": int(sums[3].item()),
    }


# ---- the run -------------------------------------------------------------------------------------------------


def _mean(total: float, count: float) -> float:
    """The mean of the finite losses summed in total; NaN when every loss was non-finite (not a misleading 0)."""
    return total / count if count else float("nan")


def _health_warning(summary: Dict[str, Any], amp: Optional[torch.dtype]) -> Optional[str]:
    """One line that sums up what went wrong in a finished run (its epochs' warnings scroll by long before the end),
    or None for a clean run. fp16's narrow range is a cause of its own, so a run in fp16 is told of bf16."""
    problems = []
    if summary["nonfinite_losses"]:
        problems.append(f"{summary['nonfinite_losses']} non-finite losses")
    if summary["diverged_epochs"]:
        epochs = summary["diverged_epochs"]
        listed = ", ".join(map(str, epochs[:5])) + (f" and {len(epochs) - 5} more" if len(epochs) > 5 else "")
        problems.append(f"a diverged train loss (epoch{'s' if len(epochs) > 1 else ''} {listed})")
    if not summary["weights_finite"]:
        problems.append("NaN or inf in the exported weights, which are unusable")
    if not problems:
        return None
    return (f"warning: this run did not train cleanly: {'; '.join(problems)}. {DIVERGENCE_ADVICE}"
            + ("; prefer --amp bf16 to fp16" if amp == torch.float16 else ""))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _make_optimizer(cfg: Dict[str, Any], model: nn.Module, lr: float):
    from timm.optim import create_optimizer_v2, param_groups_weight_decay

    kwargs = dict(opt=cfg["opt"], lr=lr, weight_decay=cfg["weight_decay"])
    name = cfg["opt"].lower()
    if name in ("adamw", "adam", "nadamw", "lamb", "adan", "lion", "radam", "nadam"):
        kwargs.update(eps=cfg["opt_eps"], betas=tuple(cfg["opt_betas"]))
    if name in ("adamw", "adam") and all(p.is_cuda for p in model.parameters()):
        # one multi-tensor kernel per step instead of foreach's chain (4.3 ms of a 35 ms vmamba_nano step on an H100)
        kwargs.update(fused=True)
    if name in ("sgd", "momentum", "nesterov", "rmsprop", "rmsproptf"):
        kwargs.update(momentum=cfg["momentum"])
    if name == "lion":
        kwargs.pop("eps", None)
    if not cfg.get("wd_ssm", False) or not cfg["weight_decay"]:
        return create_optimizer_v2(model, **kwargs)
    # the official grouping: 1-d params, biases and pos_embed only (A_logs, dt_projs_bias decayed; spec §9)
    declared = getattr(model, "no_weight_decay", lambda: set())()
    keep = {n for n in declared if n.rsplit(".", 1)[-1] not in ("A_logs", "Ds", "dt_projs_bias")}
    groups = param_groups_weight_decay(model, cfg["weight_decay"], no_weight_decay_list=keep)
    kwargs.pop("weight_decay")
    return create_optimizer_v2(groups, weight_decay=cfg["weight_decay"], **kwargs)


def _make_scheduler(cfg: Dict[str, Any], optimizer, total_steps: int, warmup_steps: int, lrs: Dict[str, float]):
    from timm.scheduler import CosineLRScheduler

    if cfg["sched"] == "constant":
        for group in optimizer.param_groups:
            group["lr"] = lrs["lr"]
        return None
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps - warmup_steps),
        lr_min=lrs["min_lr"],
        warmup_lr_init=lrs["warmup_lr"],
        warmup_t=warmup_steps,
        cycle_limit=1,
        t_in_epochs=False,
        warmup_prefix=True,
    )


class _Progress:
    """A tqdm bar per epoch on a terminal (or when asked), log lines otherwise."""

    def __init__(self, mode: str, log: Logger, enabled: bool):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode if enabled else "none"
        self.log = log
        self.bar = None

    def start(self, epoch: int, epochs: int, total: int, initial: int) -> None:
        self.epoch, self.epochs, self.total = epoch, epochs, total
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=f"Epoch {epoch + 1}/{epochs}", unit="step",
                            dynamic_ncols=True, leave=True, file=sys.stderr)
            self.log.bar = self.bar

    def update(self, step: int, n: int, stats: Optional[Dict[str, float]]) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if stats:
                self.bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}",
                                     img_s=f"{stats['img_s']:.0f}", refresh=False)
        elif self.mode == "log" and stats:
            self.log(
                f"Train: [{self.epoch + 1}/{self.epochs}][{step}/{self.total}]\t"
                f"loss {stats['loss']:.4f}\tlr {stats['lr']:.3e}\t{stats['img_s']:.0f} img/s"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.log.bar = None


class _Outputs:
    """JSONL log, TensorBoard scalars and the curves plot of rank 0."""

    def __init__(self, cfg: Dict[str, Any], out_dir: str, resume_step: Optional[int], history: List[Dict[str, Any]],
                 enabled: bool, log: Logger):
        self.enabled = enabled
        self.jsonl = os.path.join(out_dir, "log.jsonl")
        self.tb = None
        if not enabled:
            return
        if resume_step is not None:
            # keep the step lines up to the checkpoint we resume from (the rest is about to be redone) and take the
            # epoch lines from the checkpoint's history, which is authoritative
            records = []
            if os.path.exists(self.jsonl):
                with open(self.jsonl) as f:
                    for line in f:
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError:
                            continue  # a line cut short by the crash
                        if rec.get("type") == "step" and rec.get("global_step", 0) <= resume_step:
                            records.append(rec)
            records += [dict(r) for r in history]
            records.sort(key=lambda r: (r.get("global_step", 0), r.get("type") == "epoch"))
            atomic_write(self.jsonl, "".join(json.dumps(r) + "\n" for r in records).encode())
        elif os.path.exists(self.jsonl):
            os.remove(self.jsonl)
        if cfg.get("tensorboard", True):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=resume_step)
            except Exception as err:  # tensorboard missing or broken: not worth failing a run for
                log(f"warning: TensorBoard disabled ({err})")

    def record(self, rec: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            step = rec["global_step"]
            prefix = "train" if rec["type"] == "step" else "epoch"
            for k, v in rec.items():
                if k in ("type", "global_step", "epoch", "time") or not isinstance(v, (int, float)):
                    continue
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _resolve_resume(cfg: Dict[str, Any], given: Dict[str, Any], out_dir: str, log: Logger):
    resume = cfg.get("resume")
    if not resume:
        return None, None
    if resume == "auto":
        path, state = find_resume_checkpoint(os.path.join(out_dir, "checkpoints"), log)
        if path is None:
            log(f"--resume auto: no checkpoint in {os.path.join(out_dir, 'checkpoints')}, starting from scratch")
        return path, state
    if not os.path.exists(resume):
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
    return resume, read_training_checkpoint(resume)


def _merge_resumed_config(saved: Dict[str, Any], cfg: Dict[str, Any], given: Dict[str, Any], log: Logger) -> Dict[str, Any]:
    merged = dict(saved)
    for key, value in given.items():
        if key in ("preset",):
            continue
        if merged.get(key) != value:
            if key not in RUN_KEYS | INVOCATION_KEYS:
                log(f"note: {key} changed from the checkpoint's {merged.get(key)!r} to {value!r}; the run will differ "
                    f"from an uninterrupted one")
            merged[key] = value
    for key in RUN_KEYS:
        if key in cfg and key not in given:
            merged.setdefault(key, cfg[key])
    for key in INVOCATION_KEYS:
        merged[key] = cfg.get(key)
    return merged


class UsageError(ValueError):
    """A configuration that cannot run (unknown model, bad option combination, occupied output folder)."""


def _check_fresh_output(out_dir: str, ckpt_dir: str, overwrite: bool, log: Logger) -> None:
    old = [p for p in os.listdir(ckpt_dir) if p.endswith(".pth")] if os.path.isdir(ckpt_dir) else []
    if not old:
        return
    if not overwrite:
        raise UsageError(
            f"{out_dir} already holds checkpoints of a run ({len(old)} files in {ckpt_dir}). Continue it with "
            f"--resume auto, start afresh there with --overwrite (deletes them), or choose another --output"
        )
    for name in old:
        os.remove(os.path.join(ckpt_dir, name))
    for name in ("log.jsonl", "summary.json", "curves.png", "model.safetensors"):
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    tb = os.path.join(out_dir, "tensorboard")
    if os.path.isdir(tb):
        import shutil

        shutil.rmtree(tb, ignore_errors=True)
    log(f"--overwrite: removed the previous run's checkpoints and logs in {out_dir}")


def train(cfg: Dict[str, Any], given: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run a training job described by a resolved configuration (see :mod:`vssm.train.config`).

    ``given`` holds the flags set explicitly on the command line (they win over a resumed checkpoint's config).
    Returns the summary (final metrics, best, paths) that rank 0 also writes to ``OUTPUT/summary.json``, or
    ``{"stopped": True, "epoch": ..., "checkpoint": ...}`` when ``stop_after_minutes`` ended this process early.
    """
    given = dict(given or {})
    dist = setup_distributed(cfg.get("device", "auto"), cfg.get("threads"))
    try:
        return _train(cfg, given, dist)
    finally:
        cleanup_distributed(dist)


def _train(cfg: Dict[str, Any], given: Dict[str, Any], dist: DistInfo) -> Dict[str, Any]:
    process_start = time.perf_counter()
    log = Logger(dist)
    device = dist.device
    if cfg.get("model") is None:
        raise UsageError("no --model given and the preset names none")
    out_dir = cfg.get("output") or default_output(cfg)
    cfg["output"] = out_dir
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    if dist.is_main:
        os.makedirs(ckpt_dir, exist_ok=True)
        remove_stale_temp_files(ckpt_dir)
        remove_stale_temp_files(out_dir)
    barrier(dist)

    resume_path, state = _resolve_resume(cfg, given, out_dir, log)
    if state is None and dist.is_main:
        _check_fresh_output(out_dir, ckpt_dir, bool(cfg.get("overwrite")), log)
    barrier(dist)
    if state is not None:
        cfg = _merge_resumed_config(state["config"], cfg, given, log)
        cfg["output"] = out_dir

    if cfg.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    _seed_everything(cfg["seed"] + dist.rank)

    # data + model; ImageFolder data takes the model's default input size and normalisation where the config
    # says nothing, read from the model built for training (as `vssm eval` does), so no second model is built
    info = data_info(cfg)
    is_folder = info.name != "fashion-mnist"
    build_size = cfg.get("img_size") if is_folder else info.img_size  # None: the model's default
    model = build_model(cfg["model"], info.num_classes, info.in_chans, build_size, cfg.get("drop_path"),
                        cfg.get("pretrained", False), cfg.get("model_kwargs"), cfg.get("model_module"))
    if is_folder:
        info = data_info(cfg, model)
    cfg["img_size"] = info.img_size
    cfg["in_chans"] = info.in_chans
    cfg["num_classes"] = info.num_classes

    if cfg.get("init_checkpoint") and state is None:
        result = load_checkpoint(model, cfg["init_checkpoint"], strict=False)
        log(f"initial weights from {cfg['init_checkpoint']} (missing {len(result['missing'])}, unexpected "
            f"{len(result['unexpected'])} keys)")
    if cfg.get("grad_checkpointing"):
        model.set_grad_checkpointing(True)
    model.to(device)
    if cfg.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    if cfg.get("cuda_graphs"):
        if device.type != "cuda" or dist.enabled:
            raise UsageError(f"--cuda-graphs needs one CUDA device in a single process (this run: {device.type}, "
                             f"{dist.world_size} process(es)); drop the flag")
        enable_cuda_graphs(model)
    n_params = sum(p.numel() for p in model.parameters())

    train_loader = build_train_loader(cfg, info, dist, device)
    val_loader = build_eval_loader(cfg, info, dist, device)
    steps_per_epoch = len(train_loader)
    epochs = int(cfg["epochs"])
    total_steps = steps_per_epoch * epochs
    warmup_steps = min(int(round(cfg["warmup_epochs"] * steps_per_epoch)), max(0, total_steps - 1))
    global_batch = cfg["batch_size"] * dist.world_size
    scale = global_batch / cfg["lr_base_batch"] if cfg.get("lr_base_batch") else 1.0
    lrs = {k: cfg[k] * scale for k in ("lr", "min_lr", "warmup_lr")}

    optimizer = _make_optimizer(cfg, model, lrs["lr"])
    scheduler = _make_scheduler(cfg, optimizer, total_steps, warmup_steps, lrs)
    budget = None
    if cfg.get("time_budget"):
        budget = time_budget.TimeBudget(60.0 * cfg["time_budget"], epochs, steps_per_epoch, warmup_steps,
                                        total_steps - warmup_steps)
    amp = amp_dtype(cfg.get("amp", "auto"), device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    train_model = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    ema = None
    if cfg.get("ema"):
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg["ema_decay"], use_warmup=bool(cfg.get("ema_warmup")), warmup_power=3 / 4)
    if cfg.get("compile"):
        train_model = torch.compile(train_model, mode=cfg.get("compile_mode") or "default")

    mixup_fn = None
    if (cfg.get("mixup") or 0) > 0 or (cfg.get("cutmix") or 0) > 0:
        from timm.data import Mixup

        mixup_fn = Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], prob=cfg["mixup_prob"],
                         switch_prob=cfg["mixup_switch_prob"], mode=cfg["mixup_mode"],
                         label_smoothing=cfg.get("smoothing") or 0.0, num_classes=info.num_classes)
    if mixup_fn is not None:
        from timm.loss import SoftTargetCrossEntropy

        criterion = SoftTargetCrossEntropy()
    elif cfg.get("smoothing"):
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg["smoothing"])
    else:
        criterion = nn.CrossEntropyLoss()

    teacher = None
    if cfg.get("teacher"):
        teacher = load_teacher(cfg["teacher"], info.num_classes, info.in_chans, info.mean, info.std, device,
                               cfg.get("teacher_model"))
        if cfg.get("channels_last"):
            teacher.to(memory_format=torch.channels_last)
        # without CUDA graphs: the teacher's logits must stay valid through the student's graph replays, which
        # draw on the same memory pool
        teacher_fn = torch.compile(teacher, mode="default") if cfg.get("compile") else teacher
    distill_w, distill_t = float(cfg["distill_weight"]), float(cfg["distill_temperature"])

    def loss_of(out: torch.Tensor, target: torch.Tensor, teacher_logits: Optional[torch.Tensor]) -> torch.Tensor:
        loss = criterion(out.float(), target)
        if teacher_logits is not None:
            loss = (1 - distill_w) * loss + distill_w * distillation_loss(out, teacher_logits, distill_t)
        return loss

    # position and history
    start_epoch, start_step, global_step = 0, 0, 0
    epoch_sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, images of finite losses, non-finite
    history: List[Dict[str, Any]] = []
    step_log: List[List[float]] = []
    best = {"acc1": -1.0, "epoch": -1, "path": None}
    if state is not None:
        model.load_state_dict(state["model"])
        if ema is not None:
            if state.get("model_ema") is None:
                raise CheckpointError(f"{resume_path} has no EMA weights but this run uses --ema")
            ema.module.load_state_dict(state["model_ema"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if budget is not None and state.get("time_budget"):
            budget.load_state_dict(state["time_budget"])
        start_epoch, start_step, global_step = int(state["epoch"]), int(state["step_in_epoch"]), int(state["global_step"])
        epoch_sums = state["epoch_sums"].to(device=device, dtype=torch.float64)
        history = list(state.get("history", []))
        step_log = [list(r) for r in state.get("step_log", [])]
        best = dict(state.get("best", best))
        rngs = state.get("rng") or []
        if len(rngs) == dist.world_size:
            restore_rng(rngs[dist.rank], device)
        else:
            log(f"warning: the checkpoint holds RNG states of {len(rngs)} processes, this run has {dist.world_size}; "
                f"reseeding (the run will not be bit-identical to an uninterrupted one)")
            _seed_everything(cfg["seed"] + dist.rank + 1000 * global_step)
        log(f"resumed from {resume_path}: epoch {start_epoch + 1}, step {start_step}/{steps_per_epoch}, "
            f"global step {global_step}")
    if global_step != start_epoch * steps_per_epoch + start_step:
        raise CheckpointError(
            f"checkpoint position (epoch {start_epoch}, step {start_step}, global step {global_step}) does not match "
            f"{steps_per_epoch} steps per epoch: the data, batch size or number of processes changed"
        )

    sam = SharpnessAware(model.parameters(), cfg["sam_rho"]) if cfg.get("sam_rho") else None
    sam_start_epoch = int(cfg.get("sam_start_epoch") or 1)
    outputs = _Outputs(cfg, out_dir, global_step if state is not None else None, history, dist.is_main, log)
    if dist.is_main:
        atomic_write(os.path.join(out_dir, "config.json"), json.dumps(cfg, indent=2, sort_keys=True).encode())
    mode = "DDP x%d (%s)" % (dist.world_size, dist.backend) if dist.enabled else "single process"
    log(f"vssm train: {cfg['model']} ({n_params / 1e6:.2f}M params) on {info.name} "
        f"({train_loader.num_samples} train / {val_loader.num_samples} "
        f"{'held-out' if eval_part(cfg) == 'holdout' else 'val'} images, {info.img_size}px, "
        f"{info.num_classes} classes), preset {cfg.get('preset')}")
    log(f"  {mode} on {device}, global batch {global_batch}, {steps_per_epoch} steps/epoch x {epochs} epochs, "
        f"lr {lrs['lr']:.3g} (warm-up {warmup_steps} steps), amp {str(amp).replace('torch.', '') if amp else 'none'}, "
        f"ema {'%.4g' % cfg['ema_decay'] if ema is not None else 'off'}"
        f"{', sam rho %g from epoch %d' % (cfg['sam_rho'], sam_start_epoch) if sam is not None else ''}"
        f"{', time budget %g min (the steps fitted to it)' % cfg['time_budget'] if budget else ''}"
        f"{', distilled from %s (weight %g, temperature %g)' % (cfg['teacher'], distill_w, distill_t) if teacher else ''}, "
        f"output {out_dir}")

    progress = _Progress(cfg.get("progress", "auto"), log, dist.is_main)
    log_interval = max(1, int(cfg.get("log_interval") or 50))
    save_every = int(cfg.get("save_every_steps") or 0)
    keep_last = int(cfg.get("keep_last") or 2)
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    local_batch = cfg["batch_size"]
    clip = cfg.get("clip_grad")
    eval_every = max(1, int(cfg.get("eval_every") or 1))

    def checkpoint_state(epoch_pos: int, step_pos: int) -> Optional[Dict[str, Any]]:
        rngs = all_gather_objects(capture_rng(device), dist)
        if not dist.is_main:
            return None
        return {
            "format": FORMAT,
            "model": model.state_dict(),
            "model_ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "time_budget": budget.state_dict() if budget is not None else None,
            "epoch": epoch_pos,
            "step_in_epoch": step_pos,
            "global_step": global_step,
            "epoch_sums": epoch_sums.detach().cpu(),
            "history": history,
            "step_log": step_log,
            "best": best,
            "config": cfg,
            "rng": [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in r.items()} for r in rngs],
            "world_size": dist.world_size,
            "torch_version": str(torch.__version__),
        }

    def save(epoch_pos: int, step_pos: int, epochs_done: int, is_best: bool = False) -> Optional[str]:
        st = checkpoint_state(epoch_pos, step_pos)
        path = None
        if dist.is_main:
            path = checkpoint_path(ckpt_dir, epochs_done, global_step)
            atomic_save(st, path)
            atomic_link(path, os.path.join(ckpt_dir, "last.pth"))
            if is_best:
                atomic_link(path, os.path.join(ckpt_dir, "best.pth"))
            prune_checkpoints(ckpt_dir, keep_last, protect=(os.path.join(ckpt_dir, "best.pth"),))
        barrier(dist)
        return path

    save_every_epochs = max(1, int(cfg.get("save_every_epochs") or 1))
    last_plot = -1e9
    run_start = time.perf_counter()
    last_eval: Dict[str, Any] = history[-1] if history else {}
    planned = epochs  # the epochs the run will have begun: --epochs, or the time budget's plan
    budget_mark: Optional[Tuple[float, int]] = None  # (time, step in epoch) the budget measures the next steps from
    steps_end: Optional[float] = None  # when the previous epoch's steps ended (its end's overhead follows)
    reported_end = 0  # the time budget's end step as last logged
    if budget is not None:
        budget.start()
        planned, reported_end = budget.epochs, budget.end_step
    for epoch in range(start_epoch, epochs):
        if budget is not None:
            if steps_end is not None:
                budget.add_epoch_overhead(time_budget.clock() - steps_end)
            if budget.is_done(global_step):
                break
        first_step = start_step if epoch == start_epoch else 0
        if first_step == 0:
            epoch_sums.zero_()
        train_model.train()
        progress.start(epoch, planned, steps_per_epoch, first_step)
        if budget_mark is not None:
            budget_mark = (time_budget.clock(), first_step)
        t_epoch = t_window = time.perf_counter()
        window_images, window_sum = 0, torch.zeros(2, dtype=torch.float64, device=device)
        steps_done = 0
        for step, (x, y) in enumerate(train_loader.iter_epoch(epoch, first_step), start=first_step):
            if budget is not None and budget.is_done(global_step):
                break  # the time budget's plan ends inside this epoch
            faults.maybe_kill_at_step(global_step)
            if scheduler is not None:
                scheduler.step_update(num_updates=budget.updates(global_step) if budget is not None else global_step)
            if cfg.get("channels_last"):
                x = x.contiguous(memory_format=torch.channels_last)
            target = y
            if mixup_fn is not None:
                x, target = mixup_fn(x, y)
            with autocast:
                teacher_logits = teacher_fn(x) if teacher is not None else None
                out = train_model(x)
                loss = loss_of(out, target, teacher_logits)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if sam is not None and epoch + 1 >= sam_start_epoch:
                sam.ascend()
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    sharp_loss = loss_of(train_model(x), target, teacher_logits)
                scaler.scale(sharp_loss).backward()
                sam.restore()
            if clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model, step=global_step)
            global_step += 1
            steps_done += 1
            with torch.no_grad():  # running sums stay on the device: no host sync per step
                l = loss.detach().double()
                finite = torch.isfinite(l)
                l = torch.where(finite, l, torch.zeros_like(l))
                epoch_sums += torch.stack([l * local_batch, finite.double() * local_batch, (~finite).double()])
                window_sum += torch.stack([l, finite.double()])
            window_images += local_batch * dist.world_size
            stats = None
            if (step + 1) % log_interval == 0 or step + 1 == steps_per_epoch:
                now = time.perf_counter()
                ws = window_sum.tolist()
                lr = optimizer.param_groups[0]["lr"]
                stats = {"loss": _mean(ws[0], ws[1]), "lr": lr, "img_s": window_images / max(now - t_window, 1e-9)}
                step_log.append([global_step, stats["loss"], lr])
                outputs.record({"type": "step", "epoch": epoch + 1, "global_step": global_step,
                                "loss": stats["loss"], "lr": lr, "img_per_s": stats["img_s"]})
                t_window, window_images = now, 0
                window_sum.zero_()
                if budget is not None:
                    if budget_mark is not None:  # this process's first window holds its start-up: no measure
                        reported_end = _replan(budget, budget_mark, step + 1, global_step, steps_per_epoch,
                                               reported_end, device, dist, log)
                        planned = budget.epochs
                    budget_mark = (time_budget.clock(), step + 1)
            progress.update(step + 1, 1, stats)
            if save_every and global_step % save_every == 0 and step + 1 < steps_per_epoch:
                save(epoch, step + 1, epoch)
        progress.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - t_epoch
        steps_end = time_budget.clock()
        sums = all_reduce_sum(epoch_sums.clone(), dist).tolist()
        rec: Dict[str, Any] = {
            "type": "epoch",
            "epoch": epoch + 1,
            "global_step": global_step,
            "train_loss": _mean(sums[0], sums[1]),
            "nonfinite_losses": int(sums[2]),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time": train_time,
            "img_per_s": steps_done * global_batch / max(train_time, 1e-9),
        }
        is_last = budget.is_done(global_step) if budget is not None else epoch + 1 == epochs
        partial = first_step + steps_done < steps_per_epoch  # a time budget's last epoch may end early
        if (epoch + 1) % eval_every == 0 or is_last:
            t_eval = time.perf_counter()
            m = evaluate(model, val_loader, device, dist, amp, channels_last=bool(cfg.get("channels_last")))
            rec.update({f"val_{k}": v for k, v in m.items() if k != "n_images"})
            rec["val_images"] = m["n_images"]
            if ema is not None:
                me = evaluate(ema.module, val_loader, device, dist, amp, channels_last=bool(cfg.get("channels_last")))
                rec.update({f"ema_val_{k}": v for k, v in me.items() if k != "n_images"})
            rec["eval_time"] = time.perf_counter() - t_eval
            score = rec["ema_val_acc1"] if ema is not None else rec["val_acc1"]
            if score > best["acc1"]:
                best.update(acc1=score, epoch=epoch + 1)
            ema_txt = f"  EMA Acc@1 {rec['ema_val_acc1']:.3f}" if ema is not None else ""
            log(f"Epoch {epoch + 1}/{planned}: train loss {rec['train_loss']:.4f}  val loss {rec['val_loss']:.4f}  "
                f"Acc@1 {rec['val_acc1']:.3f}  Acc@5 {rec['val_acc5']:.3f}{ema_txt}  "
                f"({train_time:.0f}s, {rec['img_per_s']:.0f} img/s)")
            last_eval = rec
        else:
            score = None
            log(f"Epoch {epoch + 1}/{planned}: train loss {rec['train_loss']:.4f} ({train_time:.0f}s)")
        if rec["nonfinite_losses"]:
            log(f"warning: {rec['nonfinite_losses']} non-finite losses in epoch {epoch + 1}")
        # an epoch of non-finite losses only (NaN) has diverged too; its warning is the one above
        rec["diverged"] = not rec["train_loss"] <= DIVERGED_LOSS_RATIO * math.log(info.num_classes)
        if rec["diverged"] and math.isfinite(rec["train_loss"]):
            log(f"warning: the train loss of epoch {epoch + 1} ({rec['train_loss']:.4g}) is more than "
                f"{DIVERGED_LOSS_RATIO:g}x that of a constant uniform guess (ln {info.num_classes} = "
                f"{math.log(info.num_classes):.3f}): training has diverged. {DIVERGENCE_ADVICE}")
        rec["time"] = time.time()
        history.append(rec)
        epoch_sums.zero_()
        stop = not is_last and _time_is_up(cfg.get("stop_after_minutes"), process_start, device, dist)
        if (epoch + 1) % save_every_epochs == 0 or is_last or stop:
            # best.pth: the best of the epochs that were saved (all of them with --save-every-epochs 1)
            is_best = score is not None and score > best.get("saved_acc1", -1.0)
            if is_best:
                best.update(saved_acc1=score, saved_epoch=epoch + 1, path=os.path.join(ckpt_dir, "best.pth"))
            epoch_pos, step_pos = (epoch, first_step + steps_done) if partial else (epoch + 1, 0)
            save(epoch_pos, step_pos, epoch + 1, is_best=is_best)
        outputs.record(rec)
        if dist.is_main and cfg.get("plot", True) and time.perf_counter() - last_plot > 60 and not is_last:
            _plot_safely(history, step_log, out_dir, log)  # at most once a minute while training
            last_plot = time.perf_counter()
        if stop:
            log(f"stopping after {(time.perf_counter() - process_start) / 60:.1f} minutes at the end of epoch "
                f"{epoch + 1}/{planned} (--stop-after-minutes {cfg['stop_after_minutes']:g}); the checkpoint is "
                f"{os.path.join(ckpt_dir, 'last.pth')}: run the same command with --resume auto to continue")
            if dist.is_main and cfg.get("plot", True):
                _plot_safely(history, step_log, out_dir, log)
            outputs.close()
            barrier(dist)
            return {"stopped": True, "epoch": epoch + 1, "epochs": planned, "global_step": global_step,
                    "checkpoint": os.path.join(ckpt_dir, "last.pth"), "output": out_dir}

    # the end: export weights, summary
    summary: Dict[str, Any] = {}
    if dist.is_main:
        final = ema.module if ema is not None else model
        weights = os.path.join(out_dir, "model.safetensors")
        meta = {
            "format": WEIGHTS_FORMAT,
            "model": cfg["model"],
            "model_kwargs": cfg.get("model_kwargs") or {},
            "model_module": cfg.get("model_module"),
            "num_classes": info.num_classes,
            "in_chans": info.in_chans,
            "img_size": info.img_size,
            "data": info.name,
            "mean": list(info.mean),
            "std": list(info.std),
            "weights": "ema" if ema is not None else "model",
            "fit": cfg.get("fit", "auto"),
            "crop_pct": info.crop_pct,
            "interpolation": info.interpolation,
        }
        final_state = final.state_dict()
        export_safetensors(final_state, weights, meta)
        last = history[-1] if history else {}
        final_prefix = "ema_val_" if ema is not None else "val_"
        summary = {
            "stopped": False,
            "model": cfg["model"],
            "params": n_params,
            "data": info.name,
            "epochs": planned,
            "global_step": global_step,
            "final": {k: last_eval.get(final_prefix + k) for k in ("acc1", "acc5", "loss")},
            "final_model": {k: last_eval.get("val_" + k) for k in ("acc1", "acc5", "loss")},
            "n_images": last_eval.get("val_images"),
            "val_split": eval_part(cfg),
            "best": best,
            "nonfinite_losses": int(sum(r.get("nonfinite_losses", 0) for r in history)),
            "diverged_epochs": [r["epoch"] for r in history if r.get("diverged")],
            "weights_finite": all(bool(torch.isfinite(t).all()) for t in final_state.values() if t.is_floating_point()),
            "train_time_s": sum(r.get("epoch_time", 0) for r in history),
            "run_time_s": time.perf_counter() - run_start,
            "weights": weights,
            "checkpoint": os.path.join(ckpt_dir, "last.pth"),
            "best_checkpoint": best.get("path"),
            "plot": os.path.join(out_dir, "curves.png") if cfg.get("plot", True) else None,
            "log": outputs.jsonl,
            "output": out_dir,
            "history": [{k: v for k, v in r.items() if k not in ("time",)} for r in history],
        }
        summary["final"]["weights"] = "ema" if ema is not None else "model"
        if budget is not None:
            summary["time_budget"] = {"minutes": cfg["time_budget"], "used_minutes": budget.elapsed() / 60,
                                      "max_epochs": epochs, "epochs": round(global_step / steps_per_epoch, 3)}
        if cfg.get("cuda_graphs"):
            graphs = model.forward_features
            summary["cuda_graphs"] = {"captures": graphs.captures, "replays": graphs.replays}
            log(f"CUDA graphs: {graphs.captures} captured, {graphs.replays} training steps replayed")
        atomic_write(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2).encode())
        if cfg.get("plot", True):
            _plot_safely(history, step_log, out_dir, log)
        warning = _health_warning(summary, amp)
        if warning:
            log(warning)
        log(f"done: final Acc@1 {summary['final']['acc1']:.3f} ({summary['final']['weights']} weights), best "
            f"{best['acc1']:.3f} at epoch {best['epoch']}; weights {weights}, checkpoint {summary['checkpoint']}")
    outputs.close()
    barrier(dist)
    return summary


def _replan(budget: "time_budget.TimeBudget", mark: Tuple[float, int], step_in_epoch: int, global_step: int,
            steps_per_epoch: int, reported_end: int, device: torch.device, dist: DistInfo, log: "Logger") -> int:
    """Remake the time budget's plan, the steps since ``mark`` (in this epoch) folded into its seconds per step.
    The measures are averaged over the processes first, so that every process plans the same end. Logs the plan
    when it has moved by a tenth of an epoch and 2% of the run or more since ``reported_end`` (measured speeds
    jitter, so it moves by a few steps at most windows); returns the end step last logged."""
    t0, s0 = mark
    if step_in_epoch <= s0:
        return reported_end
    local = [budget.elapsed(), budget.observe(time_budget.clock() - t0, step_in_epoch - s0), budget.epoch_overhead]
    values = all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=device), dist) / dist.world_size
    elapsed, step_seconds, overhead = values.tolist()
    budget.replan(global_step, step_seconds, elapsed, overhead)
    if abs(budget.end_step - reported_end) < max(steps_per_epoch / 10, budget.end_step / 50):
        return reported_end
    log(f"time budget: {elapsed / 60:.2f} of {budget.seconds / 60:g} min used at {step_seconds * 1e3:.0f} ms per step "
        f"and {overhead:.1f} s per epoch end: the run now ends after {budget.end_step / steps_per_epoch:.2f} epochs "
        f"(was {reported_end / steps_per_epoch:.2f})")
    return budget.end_step


def _time_is_up(minutes: Optional[float], since: float, device: torch.device, dist: DistInfo) -> bool:
    """Whether --stop-after-minutes has passed, decided the same on every rank (any rank over the limit stops all)."""
    if minutes is None:
        return False
    over = torch.tensor([float(time.perf_counter() - since > 60.0 * minutes)], device=device)
    return bool(all_reduce_sum(over, dist).item() > 0)


def _plot_safely(history, step_log, out_dir: str, log: Logger) -> None:
    try:
        from .plot import plot_curves

        plot_curves(history, step_log, os.path.join(out_dir, "curves.png"))
    except Exception as err:  # a plotting problem must never cost a training run
        log(f"warning: could not write the curves plot ({err})")
