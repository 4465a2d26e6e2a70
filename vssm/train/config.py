"""Training configuration: defaults, named presets, and the command-line flags that override them.

A configuration is a flat dict of plain values (it is stored in every checkpoint and in ``config.json``).
Resolution order: :data:`DEFAULTS`, then the preset (``--preset``; by default ``fashion-mnist`` for
``--data fashion-mnist`` and ``official`` for an ImageFolder tree), then the flags given on the command line.
"""
from __future__ import annotations

import argparse
import copy
import json
from typing import Any, Dict, List, Optional

__all__ = ["DEFAULTS", "PRESETS", "TTA_MODES", "add_train_arguments", "resolve_config", "describe_presets",
           "is_fashion_mnist"]

FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist", "fashionmnist", "fmnist")
TTA_MODES = ("none", "hflip")  # test-time augmentation of evaluation (`vssm eval --tta`)

DEFAULTS: Dict[str, Any] = dict(
    # model
    model=None,  # None: the preset's
    model_kwargs={},
    model_module=None,  # a module / .py file that registers more models with timm
    pretrained=False,
    init_checkpoint=None,
    drop_path=None,  # None: the model's default
    grad_checkpointing=False,
    compile=False,
    compile_mode="default",
    cuda_graphs=False,
    channels_last=False,
    # data
    data="fashion-mnist",
    img_size=None,  # None: the preset's, else the model's default
    in_chans=None,  # None: 1 for Fashion-MNIST, 3 for ImageFolder
    fit="auto",
    train_subset=None,
    val_subset=None,
    val_holdout=0,  # > 0: evaluate during training on this many images held out of the training split
    limit_train_batches=None,
    limit_val_batches=None,
    workers=4,
    eval_batch_size=None,
    # augmentation: tensor pipeline (Fashion-MNIST)
    translate=0,
    # augmentation: both pipelines
    hflip=0.0,
    reprob=0.0,
    remode="pixel",
    recount=1,
    # augmentation: ImageFolder (timm create_transform)
    auto_augment=None,
    color_jitter=0.0,
    scale=[0.08, 1.0],
    ratio=[0.75, 4 / 3],
    interpolation="bicubic",
    crop_pct=None,
    # mixup / cutmix / label smoothing (timm Mixup, SoftTargetCrossEntropy)
    mixup=0.0,
    cutmix=0.0,
    mixup_prob=1.0,
    mixup_switch_prob=0.5,
    mixup_mode="batch",
    smoothing=0.0,
    # knowledge distillation from a trained teacher (vssm/train/distill.py)
    teacher=None,
    teacher_model=None,  # None: the model the teacher's file records
    distill_weight=0.5,
    distill_temperature=1.0,
    # optimisation
    epochs=10,
    time_budget=None,  # minutes: fit the epochs (at most `epochs`) and the cosine schedule to this much wall time
    batch_size=128,
    opt="adamw",
    lr=1e-3,
    lr_base_batch=None,  # if set, lr, min_lr and warmup_lr are scaled by global_batch / lr_base_batch
    min_lr=1e-5,
    warmup_lr=1e-6,
    warmup_epochs=1.0,
    weight_decay=0.05,
    opt_eps=1e-8,
    opt_betas=[0.9, 0.999],
    momentum=0.9,
    clip_grad=None,
    sam_rho=0.0,  # 0: plain steps; > 0: sharpness-aware minimisation with this radius (two passes per step)
    sam_start_epoch=1,  # SAM from this epoch on (counting from 1): late SAM for a share of the cost
    wd_ssm=False,  # False: no weight decay on what model.no_weight_decay() declares (A_logs, Ds, dt biases)
    sched="cosine",
    amp="auto",
    ema=False,
    ema_decay=0.9998,
    ema_warmup=False,
    # run
    seed=0,
    deterministic=False,
    output=None,
    resume=None,
    overwrite=False,
    save_every_steps=0,
    save_every_epochs=1,
    keep_last=2,
    eval_every=1,
    stop_after_minutes=None,  # per invocation (not taken from a resumed checkpoint's config)
    log_interval=50,
    progress="auto",
    tensorboard=True,
    plot=True,
    device="auto",
    threads=None,
)

# The official VMamba ImageNet-1k recipe (shared/spec/vmamba.md §9, config.py defaults of the official code).
OFFICIAL = dict(
    img_size=224,
    epochs=300,
    batch_size=128,  # per GPU; 8 GPUs = 1024 global
    workers=8,
    opt="adamw",
    opt_betas=[0.9, 0.999],
    opt_eps=1e-8,
    weight_decay=0.05,
    lr=5e-4,
    min_lr=5e-6,
    warmup_lr=5e-7,
    lr_base_batch=512,  # 5e-4 x 1024 / 512 = 1e-3 at the official global batch
    warmup_epochs=20,
    sched="cosine",
    clip_grad=5.0,
    amp="fp16",
    wd_ssm=True,  # the official code decays A_logs and dt_projs_bias (spec §9, §10.9)
    smoothing=0.1,
    mixup=0.8,
    cutmix=1.0,
    mixup_prob=1.0,
    mixup_switch_prob=0.5,
    mixup_mode="batch",
    scale=[0.08, 1.0],
    ratio=[0.75, 4 / 3],
    interpolation="bicubic",
    hflip=0.5,
    auto_augment="rand-m9-mstd0.5-inc1",
    color_jitter=0.4,  # ignored by timm when auto_augment is set, as in the official run
    reprob=0.25,
    remode="pixel",
    recount=1,
    crop_pct=0.875,
    ema=True,
    ema_decay=0.9999,
    ema_warmup=False,
    seed=0,
)

# Fashion-MNIST from scratch on a GPU (the benchmark recipe, benchmarks/results/fashion-mnist.md): the 28 px images
# resized to 64 px (16x16 tokens in vmamba_nano's first stage), shifts of up to 3 px, flips, random erasing 0.5,
# stochastic depth 0.2, label smoothing, EMA; AdamW 2e-3 at batch 512 with a cosine schedule.
FASHION_MNIST = dict(
    model="vmamba_nano",
    img_size=64,
    fit="auto",
    in_chans=1,
    epochs=240,  # benchmarks/results/fashion-mnist.md: 11 min on an H100 with --compile-mode reduce-overhead
    drop_path=0.2,
    batch_size=512,
    opt="adamw",
    lr=2e-3,
    lr_base_batch=512,
    min_lr=1e-5,
    warmup_lr=1e-6,
    warmup_epochs=3,
    weight_decay=0.05,
    clip_grad=5.0,
    smoothing=0.1,
    translate=3,
    hflip=0.5,
    reprob=0.5,
    remode="pixel",
    mixup=0.0,
    cutmix=0.0,
    ema=True,
    ema_decay=0.999,
    ema_warmup=True,
    workers=0,
    save_every_epochs=5,
    eval_batch_size=1000,
    log_interval=100,
)

# What `vssm demo` / `make demo` runs: a few epochs of a small model on the CPU (2 cores, under 10 minutes).
FASHION_MNIST_CPU = dict(
    FASHION_MNIST,
    model="vmamba_femto",
    drop_path=None,  # the model's (0 for vmamba_femto)
    img_size=28,
    epochs=4,
    batch_size=64,
    lr=2e-3,
    lr_base_batch=None,
    warmup_epochs=0.25,
    translate=0,  # a few epochs: augmentation and label smoothing only slow the model down (measured)
    hflip=0.0,
    reprob=0.0,
    smoothing=0.0,
    ema_decay=0.999,
    eval_batch_size=500,
    save_every_epochs=1,
)

PRESETS: Dict[str, Dict[str, Any]] = {
    "official": OFFICIAL,
    "fashion-mnist": FASHION_MNIST,
    "fashion-mnist-cpu": FASHION_MNIST_CPU,
    "none": {},
}

PRESET_HELP = {
    "official": "the official VMamba ImageNet-1k recipe (spec/vmamba.md §9): 300 epochs, AdamW 1e-3 at global "
    "batch 1024, RandAugment, mixup/cutmix, random erasing, EMA 0.9999",
    "fashion-mnist": "Fashion-MNIST from scratch on a GPU (the benchmark recipe)",
    "fashion-mnist-cpu": "Fashion-MNIST on a CPU in a few minutes (what `vssm demo` runs)",
    "none": "vssm's neutral defaults only",
}


def is_fashion_mnist(data: str) -> bool:
    return str(data).lower() in FASHION_MNIST_NAMES


def describe_presets() -> str:
    return "; ".join(f"{name}: {text}" for name, text in PRESET_HELP.items())


def _bool(group, name: str, help: str) -> None:
    group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help)


def _opt(group, name: str, help: str, **kwargs) -> None:
    group.add_argument(f"--{name}", default=argparse.SUPPRESS, help=help, **kwargs)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``vssm train``. Every flag is optional and only overrides the preset when given."""
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help=f"named recipe (default: fashion-mnist for Fashion-MNIST, official for a folder). {describe_presets()}")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")

    g = parser.add_argument_group("model")
    _opt(g, "model", "any vssm or timm model name (vssm.list_models(), timm.list_models())")
    _opt(g, "model-kwargs", "JSON dict of extra model constructor arguments, e.g. '{\"dims\": 48}'", type=json.loads)
    _opt(g, "model-module", "import this module first (a dotted name on PYTHONPATH, or a .py file): a model it "
         "registers with timm's @register_model can then be named by --model; recorded in the checkpoints, so "
         "`vssm eval` and --resume import it again", metavar="MODULE")
    _bool(g, "pretrained", "start from the model's released weights (timm pretrained_cfg)")
    _opt(g, "init-checkpoint", "start from the weights of this checkpoint file (official or vssm; head may differ)")
    _opt(g, "drop-path", "stochastic depth rate (default: the model's)", type=float)
    _bool(g, "grad-checkpointing", "recompute activations in the backward pass to save memory")
    _bool(g, "compile", "torch.compile the model")
    _opt(g, "compile-mode", "torch.compile mode with --compile: default, reduce-overhead (CUDA graphs: 2x the "
         "training speed of vmamba_nano on an H100, whose eager step is host-bound) or max-autotune",
         choices=["default", "reduce-overhead", "max-autotune"])
    _bool(g, "cuda-graphs", "replay the model's trunk and its backward as CUDA graphs (vssm.enable_cuda_graphs): "
          "eager training without the host's launch overhead and without compilation; one GPU, not with --compile")
    _bool(g, "channels-last", "channels-last memory format for the model and the batches")

    g = parser.add_argument_group("data")
    _opt(g, "data", "'fashion-mnist' (default; /usr/share/datasets/fashion-mnist) or an ImageFolder tree with train/ and val/")
    _opt(g, "img-size", "input size in pixels (square)", type=int)
    _opt(g, "in-chans", "input channels (Fashion-MNIST: 1, or 3 to repeat the grey channel)", type=int)
    _opt(g, "fit", "Fashion-MNIST: 'pad' (zero border), 'resize' or 'auto' (pad up to 8 px, else resize)",
         choices=["auto", "pad", "resize"])
    _opt(g, "train-subset", "train on this many images only (a fixed random subset)", type=int)
    _opt(g, "val-subset", "evaluate on this many images only (a fixed random subset)", type=int)
    _opt(g, "val-holdout", "hold this many images (a fixed random set) out of the training split and evaluate on "
         "them during training, so that the best epoch (best.pth) is chosen without looking at the val split, "
         "which `vssm eval` then measures once (0: evaluate on the val split, the default)", type=int, metavar="N")
    _opt(g, "limit-train-batches", "at most this many steps per epoch", type=int)
    _opt(g, "limit-val-batches", "at most this many evaluation batches", type=int)
    _opt(g, "workers", "data loader worker processes (ImageFolder)", type=int)
    _opt(g, "eval-batch-size", "evaluation batch size per process (default: 2x --batch-size)", type=int)

    g = parser.add_argument_group("augmentation")
    _opt(g, "translate", "Fashion-MNIST: random shift by up to N pixels", type=int)
    _opt(g, "hflip", "horizontal flip probability", type=float)
    _opt(g, "reprob", "random erasing probability", type=float)
    _opt(g, "remode", "random erasing fill: pixel, rand or const", choices=["pixel", "rand", "const"])
    _opt(g, "recount", "random erasing boxes per image (ImageFolder)", type=int)
    _opt(g, "auto-augment", "timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1; Fashion-MNIST takes RandAugment "
         "policies (rand-...) and runs them batched on its device; 'none' to disable")
    _opt(g, "color-jitter", "colour jitter strength (ImageFolder; ignored by timm when auto-augment is set)", type=float)
    _opt(g, "scale", "random-resized-crop area range (ImageFolder)", type=float, nargs=2)
    _opt(g, "ratio", "random-resized-crop aspect range (ImageFolder)", type=float, nargs=2)
    _opt(g, "interpolation", "resize interpolation (ImageFolder): bicubic, bilinear, random", )
    _opt(g, "crop-pct", "evaluation centre-crop fraction (ImageFolder)", type=float)
    _opt(g, "mixup", "mixup alpha (0 disables)", type=float)
    _opt(g, "cutmix", "cutmix alpha (0 disables)", type=float)
    _opt(g, "mixup-prob", "probability of applying mixup or cutmix to a batch", type=float)
    _opt(g, "mixup-switch-prob", "probability of cutmix instead of mixup when both are on", type=float)
    _opt(g, "mixup-mode", "batch, pair or elem", choices=["batch", "pair", "elem"])
    _opt(g, "smoothing", "label smoothing", type=float)

    g = parser.add_argument_group("distillation")
    _opt(g, "teacher", "distil from this trained model: a model.safetensors or checkpoint that `vssm train` wrote "
         "(it records its model, input size and normalisation; the student's batches are resized to its size)",
         metavar="FILE")
    _opt(g, "teacher-model", "the teacher's model name, where its file does not record one")
    _opt(g, "distill-weight", "with --teacher: loss = (1 - w) * task loss + w * T^2 * KL(teacher || student) at "
         "temperature T (default 0.5)", type=float, metavar="W")
    _opt(g, "distill-temperature", "with --teacher: the softmax temperature T of the soft term (default 1)", type=float,
         metavar="T")

    g = parser.add_argument_group("optimisation")
    _opt(g, "epochs", "training epochs (with --time-budget: at most this many)", type=int)
    _opt(g, "time-budget", "train for about M minutes of wall time: the run measures its own speed as it goes and "
         "fits its steps (at most --epochs epochs; the last epoch may be partial) and the cosine schedule to the "
         "time left, so it ends "
         "annealed near M minutes on any host (the training loop's time: evaluations, checkpoints and compilation "
         "included, the process start-up not; not bit-reproducible)",
         type=float, metavar="M")
    _opt(g, "batch-size", "batch size per process (global batch = this x number of processes)", type=int)
    _opt(g, "opt", "timm optimizer name (adamw, sgd, lamb, ...)")
    _opt(g, "lr", "peak learning rate (scaled by global batch / --lr-base-batch when that is set)", type=float)
    _opt(g, "lr-base-batch", "global batch size at which --lr applies (linear scaling); 0 disables", type=int)
    _opt(g, "min-lr", "final learning rate of the cosine schedule", type=float)
    _opt(g, "warmup-lr", "learning rate at the start of the warm-up", type=float)
    _opt(g, "warmup-epochs", "linear warm-up length in epochs (fractions allowed)", type=float)
    _opt(g, "weight-decay", "decoupled weight decay", type=float)
    _opt(g, "opt-eps", "optimizer epsilon", type=float)
    _opt(g, "opt-betas", "optimizer betas", type=float, nargs=2)
    _opt(g, "momentum", "SGD momentum", type=float)
    _opt(g, "clip-grad", "clip the global gradient L2 norm to this (0 or omitted: off)", type=float)
    _opt(g, "sam-rho", "sharpness-aware minimisation (SAM): step with the gradient at the sharpest point within this L2 "
         "radius of the weights, e.g. 0.05; two forward/backward passes per step (0: off)", type=float)
    _opt(g, "sam-start-epoch", "with --sam-rho: plain steps before this epoch (counting from 1), SAM from it on; SAM "
         "late in training finds most of its flatter minimum for a share of the cost (default 1: every epoch)", type=int)
    _bool(g, "wd-ssm", "apply weight decay to the SSM parameters model.no_weight_decay() declares (A_logs, dt biases) "
          "like the official code; default: exclude them (norms, biases and pos_embed are never decayed)")
    _opt(g, "sched", "learning-rate schedule: cosine (with warm-up) or constant", choices=["cosine", "constant"])
    _opt(g, "amp", "mixed precision: auto (bf16 on GPUs that have it, none on CPU), bf16, fp16, none",
         choices=["auto", "bf16", "fp16", "none"])
    _bool(g, "ema", "keep an exponential moving average of the weights (timm ModelEmaV3)")
    _opt(g, "ema-decay", "EMA decay", type=float)
    _bool(g, "ema-warmup", "ramp the EMA decay up from 0 (for short runs)")

    g = parser.add_argument_group("run")
    _opt(g, "seed", "random seed", type=int)
    _bool(g, "deterministic", "deterministic algorithms (bit-identical reruns and resumes)")
    _opt(g, "output", "output folder (checkpoints, logs, plot); default runs/<model>-<data>")
    _opt(g, "resume", "'auto' (the newest readable checkpoint in --output, else start fresh) or a checkpoint file")
    _bool(g, "overwrite", "start afresh in an --output folder that holds another run's checkpoints (deletes them)")
    _opt(g, "save-every-steps", "also checkpoint every N optimizer steps inside an epoch (0: epoch ends only)", type=int)
    _opt(g, "save-every-epochs", "checkpoint every N epochs (and always after the last)", type=int)
    _opt(g, "keep-last", "how many recent checkpoints to keep (plus best.pth)", type=int)
    _opt(g, "eval-every", "evaluate every N epochs (and always after the last)", type=int)
    _opt(g, "stop-after-minutes", "end this process at the end of the first epoch that finishes after M minutes, "
         "with a checkpoint, and exit with code 75; the same command with --resume auto continues (for wall-time "
         "limits: leave an epoch of headroom)", type=float)
    _opt(g, "log-interval", "steps between log lines / progress-bar updates", type=int)
    _opt(g, "progress", "auto (a bar on a terminal, log lines otherwise), bar, log or none",
         choices=["auto", "bar", "log", "none"])
    _bool(g, "tensorboard", "write TensorBoard scalars to OUTPUT/tensorboard")
    _bool(g, "plot", "write OUTPUT/curves.png (loss, accuracy, lr)")
    _opt(g, "device", "auto, cpu, cuda or cuda:N (torchrun: one GPU per process)")
    _opt(g, "threads", "CPU threads per process (default: all cores / processes on this node)", type=int)


def resolve_config(args: argparse.Namespace) -> Dict[str, Any]:
    """DEFAULTS <- preset <- flags given on the command line."""
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS}
    data = given.get("data", DEFAULTS["data"])
    preset = args.preset or ("fashion-mnist" if is_fashion_mnist(data) else "official")
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(copy.deepcopy(PRESETS[preset]))
    cfg.update(given)
    cfg["preset"] = preset
    if is_fashion_mnist(cfg["data"]):
        cfg["data"] = "fashion-mnist"
    if cfg.get("auto_augment") in ("none", "None", ""):
        cfg["auto_augment"] = None
    if cfg.get("auto_augment") and cfg["data"] == "fashion-mnist":
        from ..data.rand_augment import RandAugmentPolicy

        RandAugmentPolicy.parse(cfg["auto_augment"])  # fails here, before any work, on a policy it cannot run
    if cfg.get("lr_base_batch") == 0:
        cfg["lr_base_batch"] = None
    if cfg.get("clip_grad") == 0:
        cfg["clip_grad"] = None
    for key in ("scale", "ratio", "opt_betas"):
        if cfg.get(key) is not None:
            cfg[key] = [float(v) for v in cfg[key]]
    if cfg.get("stop_after_minutes") is not None and cfg["stop_after_minutes"] < 0:
        raise ValueError(f"--stop-after-minutes must be >= 0, got {cfg['stop_after_minutes']:g}")
    if cfg.get("time_budget") is not None and not cfg["time_budget"] > 0:
        raise ValueError(f"--time-budget is in minutes and must be > 0, got {cfg['time_budget']:g}")
    if not (cfg.get("sam_rho") or 0) >= 0:
        raise ValueError(f"--sam-rho must be >= 0 (0 turns SAM off), got {cfg['sam_rho']:g}")
    if not 0.0 <= cfg["distill_weight"] <= 1.0:
        raise ValueError(f"--distill-weight is the soft term's share of the loss and must be in [0, 1], got "
                         f"{cfg['distill_weight']:g}")
    if not cfg["distill_temperature"] > 0:
        raise ValueError(f"--distill-temperature must be > 0, got {cfg['distill_temperature']:g}")
    if cfg.get("teacher_model") and not cfg.get("teacher"):
        raise ValueError("--teacher-model names the model of --teacher FILE; give --teacher too")
    if (cfg.get("val_holdout") or 0) < 0:
        raise ValueError(f"--val-holdout is a number of training images and must be >= 0 (0: evaluate on the val "
                         f"split), got {cfg['val_holdout']}")
    if cfg.get("sam_start_epoch") is not None and cfg["sam_start_epoch"] < 1:
        raise ValueError(f"--sam-start-epoch counts from 1, got {cfg['sam_start_epoch']}")
    if cfg.get("cuda_graphs") and cfg.get("compile"):
        raise ValueError("--cuda-graphs and --compile exclude each other; for CUDA graphs under torch.compile use "
                         "--compile --compile-mode reduce-overhead")
    if cfg.get("cuda_graphs") and cfg.get("grad_checkpointing"):
        raise ValueError("--cuda-graphs cannot replay a checkpointed forward (it is re-run in the backward); "
                         "drop one of --cuda-graphs and --grad-checkpointing")
    if not isinstance(cfg.get("model_kwargs") or {}, dict):
        raise ValueError("--model-kwargs must be a JSON object, e.g. '{\"dims\": 48}'")
    cfg["model_kwargs"] = dict(cfg.get("model_kwargs") or {})
    return cfg


def default_output(cfg: Dict[str, Any]) -> str:
    import os

    data = "fashion-mnist" if is_fashion_mnist(cfg["data"]) else os.path.basename(os.path.normpath(cfg["data"]))
    return os.path.join("runs", f"{cfg['model']}-{data}")


def config_diff(cfg: Dict[str, Any], base: Optional[Dict[str, Any]] = None) -> List[str]:
    """Keys whose value differs from ``base`` (DEFAULTS by default), for short summaries."""
    base = DEFAULTS if base is None else base
    return [k for k in sorted(cfg) if base.get(k) != cfg[k]]
