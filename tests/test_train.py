"""`vssm train` / `vssm eval`: accuracy on a Fashion-MNIST subset, crash-safe resume (SIGKILL mid-epoch and
mid-checkpoint-write), DDP over gloo equal to one process, ImageFolder data, clear errors, eval JSON.

Subprocess runs use one thread each and ``--deterministic``; the small runs use a 50k-parameter VMamba so the whole
file stays within a few minutes on two CPU cores.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import vssm
from conftest import needs_data, requires_cuda, run_cli, run_vssm
from vssm.data.tensor_loader import TensorAugment, TensorTrainLoader
from vssm.train.checkpointing import atomic_write, list_checkpoints

pytestmark = needs_data

TINY = ["--model", "vmamba_femto", "--model-kwargs", '{"dims": [16, 32, 64], "depths": [1, 1, 1]}',
        "--img-size", "28", "--train-subset", "256", "--val-subset", "200", "--batch-size", "32", "--epochs", "2",
        "--warmup-epochs", "0.5", "--lr-base-batch", "0", "--translate", "2", "--hflip", "0.5", "--reprob", "0.25",
        "--no-tensorboard", "--progress", "log", "--log-interval", "4", "--deterministic", "--seed", "3",
        "--save-every-epochs", "1", "--drop-path", "0"]


def vssm_cmd(*args, fault=None, check=True, timeout=300, nproc=1):
    return run_vssm(*args, nproc=nproc, fault=fault, timeout=timeout, check=check)


def comparable(summary: dict) -> dict:
    """The parts of summary.json that must not depend on interruptions (no times or speeds)."""
    drop = {"epoch_time", "img_per_s", "eval_time", "time"}
    history = [{k: v for k, v in r.items() if k not in drop} for r in summary["history"]]
    return {"final": summary["final"], "final_model": summary["final_model"], "best_acc1": summary["best"]["acc1"],
            "history": history, "global_step": summary["global_step"]}


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def assert_same_run(a: Path, b: Path) -> None:
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert comparable(sa) == comparable(sb)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted tiny run with mid-epoch checkpoints every 3 steps (2 epochs x 8 steps)."""
    out = tmp_path_factory.mktemp("train") / "reference"
    vssm_cmd("train", *TINY, "--save-every-steps", "3", "--threads", "1", "--output", str(out))
    return out


# ---- training, outputs, eval --------------------------------------------------------------------------------


def test_run_outputs(reference_run):
    out = reference_run
    summary = json.loads((out / "summary.json").read_text())
    for name in ("config.json", "log.jsonl", "curves.png", "model.safetensors", "checkpoints/last.pth",
                 "checkpoints/best.pth"):
        assert (out / name).exists(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list_checkpoints(str(out / "checkpoints"))) == 2  # --keep-last 2
    lines = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["type"] == "epoch"] == [1, 2]
    assert all(r["type"] == "step" and r["lr"] > 0 for r in lines if r["type"] == "step")
    assert summary["n_images"] == 200 and summary["global_step"] == 16 and summary["nonfinite_losses"] == 0
    assert summary["diverged_epochs"] == [] and summary["weights_finite"] is True
    # the training checkpoint is plain tensors / containers: weights_only loading and vssm.load_checkpoint work
    state = torch.load(out / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert state["config"]["model"] == "vmamba_femto" and len(state["rng"]) == 1
    model = vssm.create_model("vmamba_femto", num_classes=10, in_chans=1, dims=[16, 32, 64], depths=[1, 1, 1])
    vssm.load_checkpoint(model, str(out / "checkpoints" / "last.pth"), key="model_ema")
    vssm.load_checkpoint(model, str(out / "model.safetensors"))


def test_eval_json_and_log_lines(reference_run, tmp_path, capsys):
    from vssm.cli import main

    out = reference_run
    summary = json.loads((out / "summary.json").read_text())
    result = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--data", "fashion-mnist", "--val-subset",
                 "200", "--batch-size", "64", "--print-freq", "1", "--json", str(result)]) == 0
    stdout = capsys.readouterr().out
    assert "Test: [3/4]" in stdout and "Acc@1" in stdout
    star = [l for l in stdout.splitlines() if l.startswith(" * Acc@1 ")]
    assert len(star) == 1 and " Acc@5 " in star[0]
    metrics = json.loads(result.read_text())
    assert {"acc1", "acc5", "loss", "n_images"} <= set(metrics)
    assert metrics["n_images"] == 200
    assert metrics["acc1"] == pytest.approx(summary["final"]["acc1"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(summary["final"]["loss"], rel=1e-4)
    # the training checkpoint, with --model given explicitly and the raw (non-EMA) weights
    assert main(["eval", "--model", "vmamba_femto", "--checkpoint", str(out / "checkpoints" / "last.pth"),
                 "--weights", "model", "--data", "fashion-mnist", "--val-subset", "200", "--print-freq", "0"]) == 0
    assert f" * Acc@1 {summary['final_model']['acc1']:.3f} " in capsys.readouterr().out


def test_eval_flip_tta_is_the_mean_of_probabilities(reference_run, tmp_path):
    """`vssm eval --tta hflip` scores each image by the mean of the class probabilities of the image and of its
    mirror image; the loss is the cross-entropy of that mean. Checked against the computation written out."""
    import torch.nn.functional as F

    from vssm.cli import main
    from vssm.train.distributed import DistInfo
    from vssm.train.engine import UsageError, evaluate

    torch.manual_seed(1)
    model = vssm.create_model("vmamba_femto", num_classes=10, in_chans=1, dims=[16, 32, 64], depths=[1, 1, 1])
    vssm.load_checkpoint(model, str(reference_run / "model.safetensors"))
    model.eval()
    x, y = torch.randn(12, 1, 28, 28), torch.randint(0, 10, (12,))
    loader = [(x[:7], y[:7]), (x[7:], y[7:])]  # two batches of different sizes
    cpu = torch.device("cpu")
    with torch.no_grad():
        logits, mirrored = model(x), model(x.flip(-1))
    mean = (logits.softmax(-1) + mirrored.softmax(-1)) / 2
    got = evaluate(model, loader, cpu, DistInfo(), tta="hflip")
    assert got["n_images"] == 12
    assert got["acc1"] == pytest.approx(100 * (mean.argmax(-1) == y).float().mean().item())
    assert got["loss"] == pytest.approx(-mean[torch.arange(12), y].log().mean().item(), rel=1e-5)
    plain = evaluate(model, loader, cpu, DistInfo())
    assert plain["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert abs(plain["loss"] - got["loss"]) > 1e-4  # the mirror images were used
    with pytest.raises(UsageError, match="test-time augmentation 'vflip'"):
        evaluate(model, loader, cpu, DistInfo(), tta="vflip")
    # the command line: --tta is recorded in the JSON, and an unknown mode is refused by the parser
    result = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(reference_run / "model.safetensors"), "--val-subset", "200",
                 "--print-freq", "0", "--tta", "hflip", "--json", str(result)]) == 0
    metrics = json.loads(result.read_text())
    assert metrics["tta"] == "hflip" and metrics["n_images"] == 200
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", str(reference_run / "model.safetensors"), "--tta", "vflip"])


@pytest.mark.parametrize("fault", ["kill-at-step=11", "kill-in-save=4"])
def test_resume_after_sigkill_is_exact(reference_run, tmp_path, fault):
    """SIGKILL mid-epoch (step 11 of 16) or half-way through writing a checkpoint (the 4th), then --resume auto:
    the run ends with exactly the metrics and weights of the uninterrupted one."""
    out = tmp_path / "run"
    args = ["train", *TINY, "--save-every-steps", "3", "--threads", "1", "--output", str(out)]
    killed = vssm_cmd(*args, fault=fault, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "summary.json").exists()
    if fault.startswith("kill-in-save"):
        assert any(".tmp-" in p.name for p in (out / "checkpoints").iterdir())  # the half-written file
    resumed = vssm_cmd(*args, "--resume", "auto")
    assert "resumed from" in resumed.stdout
    assert not any(".tmp-" in p.name for p in (out / "checkpoints").iterdir())
    assert_same_run(reference_run, out)
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2]  # no duplicates from the killed run


def test_stop_after_minutes_then_resume_is_exact(reference_run, tmp_path):
    """--stop-after-minutes ends the process after the first epoch that finishes past the limit, with a checkpoint
    and exit code 75; the same command with --resume auto ends exactly like the uninterrupted run."""
    out = tmp_path / "run"
    args = ["train", *TINY, "--save-every-steps", "3", "--threads", "1", "--output", str(out)]
    stopped = vssm_cmd(*args, "--stop-after-minutes", "0", check=False)
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    assert "stopping after" in stopped.stdout and "end of epoch 1/2" in stopped.stdout
    assert not (out / "summary.json").exists() and not (out / "model.safetensors").exists()
    assert (out / "checkpoints" / "last.pth").exists()
    resumed = vssm_cmd(*args, "--resume", "auto")
    assert "resumed from" in resumed.stdout and "epoch 2, step 0/8" in resumed.stdout
    assert_same_run(reference_run, out)


def test_stop_after_minutes_is_not_taken_from_the_checkpoint():
    from vssm.train.engine import _merge_resumed_config

    saved = {"model": "vmamba_femto", "epochs": 4, "stop_after_minutes": 30.0}
    merged = _merge_resumed_config(saved, {"model": "vmamba_femto", "stop_after_minutes": None}, {}, print)
    assert merged["stop_after_minutes"] is None and merged["epochs"] == 4
    merged = _merge_resumed_config(saved, {"stop_after_minutes": 5.0}, {"stop_after_minutes": 5.0}, print)
    assert merged["stop_after_minutes"] == 5.0


def test_resume_skips_corrupt_newest_checkpoint(reference_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    newest = list_checkpoints(str(out / "checkpoints"))[0]
    os.remove(newest)
    with open(newest, "wb") as f:  # half a file where the newest checkpoint was
        f.write((reference_run / "checkpoints" / os.path.basename(newest)).read_bytes()[:5000])
    os.remove(out / "summary.json")
    resumed = vssm_cmd("train", *TINY, "--save-every-steps", "3", "--threads", "1", "--output", str(out),
                       "--resume", "auto")
    assert "skipping unreadable checkpoint" in resumed.stdout + resumed.stderr
    assert_same_run(reference_run, out)


def test_ddp_gloo_two_processes_match_one(reference_run, tmp_path):
    """torchrun, 2 CPU processes x batch 16 == 1 process x batch 32 (same global batch, same augmentation)."""
    out = tmp_path / "ddp"
    args = [a for a in TINY]
    args[args.index("--batch-size") + 1] = "16"
    proc = vssm_cmd("train", *args, "--save-every-steps", "3", "--threads", "1", "--output", str(out), nproc=2)
    assert "DDP x2 (gloo)" in proc.stdout
    one = json.loads((reference_run / "summary.json").read_text())
    two = json.loads((out / "summary.json").read_text())
    assert two["n_images"] == one["n_images"] == 200
    for a, b in zip(one["history"], two["history"]):
        # equal up to float summation order (measured: ~1e-8)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert abs(b["val_acc1"] - a["val_acc1"]) <= 0.5  # at most one of 200 images differs
        assert abs(b["ema_val_acc1"] - a["ema_val_acc1"]) <= 0.5
    # only rank 0 wrote: one set of checkpoints, with both ranks' RNG states
    state = torch.load(out / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2


# ---- accuracy -------------------------------------------------------------------------------------------------


def test_short_training_reaches_accuracy(tmp_path):
    """vmamba_femto, 3,000 training images, 2 epochs on the CPU: >= 75% top-1 on 1,000 test images."""
    out = tmp_path / "acc"
    vssm_cmd("train", "--preset", "fashion-mnist-cpu", "--train-subset", "3000", "--val-subset", "1000",
             "--epochs", "2", "--batch-size", "64", "--warmup-epochs", "0.2", "--no-tensorboard", "--no-plot",
             "--threads", "1", "--progress", "none", "--output", str(out), timeout=600)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["acc1"] >= 75.0, summary["final"]


# ---- data pipeline ------------------------------------------------------------------------------------------


def test_global_batch_is_split_across_ranks():
    """Rank r of N sees rows [r*B, (r+1)*B) of the single-process global batch, augmentation included."""
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    labels = torch.arange(64) % 10
    aug = TensorAugment(translate=2, hflip=0.5, reprob=0.5, remode="const")
    one = TensorTrainLoader(images, labels, 16, 32, 1, (0.5,), (0.25,), aug, seed=1)
    two = [TensorTrainLoader(images, labels, 8, 32, 1, (0.5,), (0.25,), aug, seed=1, rank=r, world_size=2)
           for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(one.iter_epoch(3), two[0].iter_epoch(3), two[1].iter_epoch(3)):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    # resuming at step 2 yields the same batches as running through
    full = list(one.iter_epoch(5))
    tail = list(one.iter_epoch(5, start_step=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], tail))


def test_normalisation_per_channel_and_checked():
    """One mean / std value is repeated over the channels; a count that fits neither 1 nor the channels is refused
    (it would otherwise broadcast a 1-channel image into 3 channels)."""
    images = torch.full((4, 8, 8), 255, dtype=torch.uint8)
    loader = TensorTrainLoader(images, torch.zeros(4, dtype=torch.long), 4, 8, 3, (0.5,), (0.25,))
    x, _ = next(loader.iter_epoch(0))
    assert x.shape == (4, 3, 8, 8) and torch.allclose(x, torch.full_like(x, 2.0))
    x, _ = next(TensorTrainLoader(images, torch.zeros(4, dtype=torch.long), 4, 8, 3, (0.0, 0.5, 1.0),
                                  (1.0, 0.5, 1.0)).iter_epoch(0))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="3 / 3 values for 1 input channels"):
        TensorTrainLoader(images, torch.zeros(4, dtype=torch.long), 4, 8, 1, (0.5,) * 3, (0.25,) * 3)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("sam", [[], ["--sam-rho", "0.1"]], ids=["plain", "sam"])
def test_train_with_cuda_graphs_follows_the_eager_run(tmp_path, sam):
    """`--cuda-graphs` replays every training step (with SAM: both passes of each) and trains like the eager run
    (no stochastic depth, so the graphs' warm-up passes draw nothing from the RNG; fp32, so only float rounding
    separates the two)."""
    summaries = {}
    for name, extra in (("eager", []), ("graphs", ["--cuda-graphs"])):
        vssm_cmd("train", *TINY, "--device", "cuda", "--amp", "none", "--output",
                 str(tmp_path / name), *sam, *extra)
        summaries[name] = json.loads((tmp_path / name / "summary.json").read_text())
    eager, graphs = summaries["eager"], summaries["graphs"]
    passes = 2 if sam else 1
    assert graphs["cuda_graphs"] == {"captures": 1, "replays": passes * graphs["global_step"]}
    assert "cuda_graphs" not in eager
    for a, b in zip(eager["history"], graphs["history"]):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3 * abs(a["train_loss"]), (a, b)
    assert abs(eager["final"]["acc1"] - graphs["final"]["acc1"]) <= 1.0


@requires_cuda
@pytest.mark.gpu
def test_train_batches_do_not_synchronize_the_gpu():
    """Drawing and augmenting a batch on the GPU never waits for the GPU: a stream sync per step would serialise the
    host's work with the previous step's kernels (and defeat CUDA graphs)."""
    images = torch.randint(0, 256, (256, 28, 28), dtype=torch.uint8, device="cuda")
    labels = torch.arange(256, device="cuda") % 10
    for aug in (TensorAugment(), TensorAugment(translate=3, hflip=0.5, reprob=0.5, remode="pixel")):
        batches = TensorTrainLoader(images, labels, 32, 64, 1, (0.5,), (0.25,), aug, seed=1).iter_epoch(0)
        next(batches)  # the epoch's order goes to the GPU once, with a blocking copy
        torch.cuda.set_sync_debug_mode("error")
        try:
            x, y = next(batches)
            next(batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert x.shape == (32, 1, 64, 64) and x.device.type == "cuda"


def test_imagefolder_train_and_eval(tmp_path, monkeypatch):
    from PIL import Image

    root = tmp_path / "folder"
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(8):
                noise = torch.randint(0, 40, (24, 24, 3), generator=gen, dtype=torch.uint8)
                img = (torch.tensor(colour, dtype=torch.uint8) + noise).clamp(0, 255)
                Image.fromarray(img.numpy()).save(d / f"{i}.png")
    out = tmp_path / "run"
    # neither --img-size nor a preset's: a folder's images are resized to the model's default input size
    # (vmamba_femto's 32 px) and normalised with its default mean and std, read from the one model that trains
    from vssm.cli import main
    from vssm.train import engine

    built, build_model = [], engine.build_model
    monkeypatch.setattr(engine, "build_model", lambda name, *a, **k: built.append(name) or build_model(name, *a, **k))
    assert main(["train", "--data", str(root), "--preset", "none", "--model", "vmamba_femto", "--model-kwargs",
                 '{"dims": [16, 32, 64], "depths": [1, 1, 1]}', "--epochs", "2", "--batch-size", "4", "--workers",
                 "0", "--no-tensorboard", "--progress", "none", "--threads", "1", "--output", str(out)]) == 0
    assert built == ["vmamba_femto"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 16 and summary["data"] == str(root)
    from timm.models import get_pretrained_cfg
    from vssm.train.checkpointing import checkpoint_metadata

    default_cfg = get_pretrained_cfg("vmamba_femto")
    meta = checkpoint_metadata(str(out / "model.safetensors"))
    assert default_cfg.input_size[-1] == 32 and meta["img_size"] == 32, meta
    assert tuple(meta["mean"]) == tuple(default_cfg.mean) and tuple(meta["std"]) == tuple(default_cfg.std), meta
    proc = vssm_cmd("eval", "--checkpoint", str(out / "model.safetensors"), "--data", str(root), "--workers", "0",
                    "--batch-size", "8", "--json", str(tmp_path / "e.json"))
    assert json.loads((tmp_path / "e.json").read_text())["n_images"] == 16
    assert "Test: [1/2]" in proc.stdout
    # --val-holdout needs no val/ folder: it evaluates on train/ images with the evaluation transform
    shutil.rmtree(root / "val")
    from vssm.data.build import build_eval_loader, build_train_loader, data_info
    from vssm.train.config import DEFAULTS
    from vssm.train.distributed import DistInfo

    cfg = dict(DEFAULTS, data=str(root), img_size=32, batch_size=4, workers=0, val_holdout=4)
    info = data_info(cfg)
    held = build_eval_loader(cfg, info, DistInfo(), torch.device("cpu"))
    train = build_train_loader(cfg, info, DistInfo(), torch.device("cpu"))
    assert (held.num_samples, train.num_samples) == (4, 12)
    held_subset, train_subset = held.dataset, train.dataset.dataset  # the train loader wraps it in seeded transforms
    held_files = {held_subset.dataset.samples[i][0] for i in held_subset.indices}
    train_files = {train_subset.dataset.samples[i][0] for i in train_subset.indices}
    assert held_files.isdisjoint(train_files) and all("/train/" in f for f in held_files)


def test_model_module_trains_a_user_model_and_eval_imports_it_again(tmp_path):
    """--model-module makes a model registered in a .py file trainable by name; the run records the module, so
    `vssm eval` of its weights needs neither --model nor --model-module. The module is the WRN peer of the
    Fashion-MNIST benchmark (benchmarks/wide_resnet.py)."""
    out = tmp_path / "wrn"
    vssm_cmd("train", "--model-module", "benchmarks/wide_resnet.py", "--model", "wrn16_4", "--img-size", "28",
             "--train-subset", "64", "--val-subset", "50", "--batch-size", "32", "--epochs", "1",
             "--warmup-epochs", "0", "--drop-path", "0.1", "--no-tensorboard", "--progress", "none", "--threads", "1",
             "--output", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "wrn16_4" and summary["global_step"] == 2
    proc = vssm_cmd("eval", "--checkpoint", str(out / "model.safetensors"), "--val-subset", "50",
                    "--json", str(tmp_path / "e.json"))
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["model"] == "wrn16_4" and result["n_images"] == 50
    assert math.isclose(result["acc1"], summary["final"]["acc1"], abs_tol=1e-6), (result, summary["final"])
    assert "2.75M params" in proc.stdout  # WRN-16-4 with 10 classes


def test_wide_resnet_peer_has_the_published_sizes():
    """The WRN peer (benchmarks/wide_resnet.py) at the parameter counts of the WRN paper's table (WRN-40-4 8.9M,
    WRN-28-10 36.5M), with a classifier on the mean of 7x7 maps for a 28 px input."""
    from vssm.factory import import_model_module

    import_model_module(str(Path(__file__).resolve().parents[1] / "benchmarks" / "wide_resnet.py"))
    sizes = {name: sum(p.numel() for p in vssm.create_model(name, num_classes=10, in_chans=3).parameters())
             for name in ("wrn40_4", "wrn28_10")}
    assert round(sizes["wrn40_4"] / 1e6, 1) == 8.9 and round(sizes["wrn28_10"] / 1e6, 1) == 36.5, sizes
    model = vssm.create_model("wrn16_4", num_classes=10, in_chans=1, drop_path_rate=0.1).eval()
    x = torch.randn(2, 1, 28, 28)
    assert model.forward_features(x).shape == (2, 256, 7, 7)
    assert model(x).shape == (2, 10)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        type(model)(depth=41, width=4)


def test_import_model_module(tmp_path, monkeypatch):
    from vssm.factory import import_model_module

    pkg = tmp_path / "user_models_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import torch.nn as nn\n"
        "from timm.models import register_model\n"
        "@register_model\n"
        "def user_linear_probe(pretrained=False, num_classes=10, in_chans=1, **kwargs):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import_model_module("user_models_pkg")
    assert isinstance(vssm.create_model("user_linear_probe", num_classes=3), nn.Sequential)
    # a file runs once per process, however often it is named
    counter = tmp_path / "counted.py"
    counter.write_text("import builtins\nbuiltins.VSSM_TEST_IMPORTS = getattr(builtins, 'VSSM_TEST_IMPORTS', 0) + 1\n")
    import builtins

    import_model_module(str(counter))
    import_model_module(str(counter))
    assert builtins.VSSM_TEST_IMPORTS == 1
    del builtins.VSSM_TEST_IMPORTS
    with pytest.raises(ValueError, match="no such file"):
        import_model_module(str(tmp_path / "missing.py"))
    with pytest.raises(ValueError, match="not found: put its package on PYTHONPATH"):
        import_model_module("no_such_user_models_xyz")
    # an import error inside the user's module is the user's, and says so
    broken = tmp_path / "broken_models.py"
    broken.write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        import_model_module(str(broken))


def test_val_holdout_is_disjoint_from_training_and_fixed():
    """The held-out images come from the training split, never reach the training batches, are the same whatever the
    run's seed, and the subsets are drawn from the right side of the split."""
    from vssm.data.build import DataError, _indices

    n = 1000
    cfg = {"val_holdout": 100}
    train, held = _indices(n, "train", cfg), _indices(n, "holdout", cfg)
    assert len(held) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(held.tolist()) and set(train.tolist()) | set(held.tolist()) == set(range(n))
    assert torch.equal(held, _indices(n, "holdout", {"val_holdout": 100, "seed": 7}))
    sub_train = _indices(n, "train", {"val_holdout": 100, "train_subset": 50})
    sub_held = _indices(n, "holdout", {"val_holdout": 100, "val_subset": 30})
    assert len(sub_train) == 50 and set(sub_train.tolist()) <= set(train.tolist())
    assert len(sub_held) == 30 and set(sub_held.tolist()) <= set(held.tolist())
    assert _indices(n, "val", {"val_holdout": 100}) is None  # the val split itself stays whole
    with pytest.raises(DataError, match="every one of the 1000 training images"):
        _indices(n, "train", {"val_holdout": 1000})


def test_train_with_val_holdout(tmp_path):
    """A run with --val-holdout evaluates on images of the training file that it never trains on, and best.pth is
    chosen on them; the loaders read disjoint images."""
    from vssm.data.build import build_eval_loader, build_train_loader, data_info
    from vssm.data.fashion_mnist import read_fashion_mnist
    from vssm.train.config import DEFAULTS
    from vssm.train.distributed import DistInfo

    cfg = dict(DEFAULTS, data="fashion-mnist", img_size=28, batch_size=64, val_holdout=300, train_subset=2000)
    info = data_info(cfg)
    single = DistInfo()
    train = build_train_loader(cfg, info, single, torch.device("cpu"))
    held = build_eval_loader(cfg, info, single, torch.device("cpu"))
    assert (train.num_samples, held.num_samples) == (2000, 300)
    train_file = {bytes(x) for x in read_fashion_mnist("train")[0]}
    held_set = {bytes(x) for x in held.images.numpy()}
    assert held_set <= train_file
    assert held_set.isdisjoint(bytes(x) for x in train.images.numpy())

    out = tmp_path / "run"
    proc = vssm_cmd("train", *TINY, "--val-holdout", "150", "--threads", "1", "--output", str(out))
    assert "256 train / 150 held-out images" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_split"] == "holdout" and summary["n_images"] == 150
    assert summary["best"]["acc1"] == max(r["ema_val_acc1"] for r in summary["history"] if "ema_val_acc1" in r)


# ---- errors ---------------------------------------------------------------------------------------------------


def test_clear_errors(tmp_path, capsys):
    code, err = run_cli(capsys, "train", "--data", str(tmp_path / "nowhere"), "--model", "vmamba_femto")
    assert code == 2 and "does not exist" in err
    (tmp_path / "notree" / "train" / "a").mkdir(parents=True)
    code, err = run_cli(capsys, "train", "--data", str(tmp_path / "notree"), "--model", "vmamba_femto")
    assert code == 2 and "no val/ folder" in err
    code, err = run_cli(capsys, "eval", "--model", "vmamba_femto", "--checkpoint", str(tmp_path / "missing.pth"))
    assert code == 2 and "checkpoint not found" in err
    bad = tmp_path / "bad.pth"
    model = vssm.create_model("vmamba_femto", num_classes=10, in_chans=1)
    torch.save({"model": model.state_dict()}, bad)
    bad.write_bytes(bad.read_bytes()[:3000])
    code, err = run_cli(capsys, "eval", "--model", "vmamba_femto", "--checkpoint", str(bad))
    assert code == 2 and "truncated or corrupt" in err
    # a weights file (official layout) is not something --resume can continue
    weights_file = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, weights_file)
    code, err = run_cli(capsys, "train", "--model", "vmamba_femto", "--output", str(tmp_path / "r"), "--resume",
                        str(weights_file))
    assert code == 2 and "not a vssm training checkpoint" in err
    code, err = run_cli(capsys, "train", "--model", "no_such_model_xyz", "--output", str(tmp_path / "r2"))
    assert code == 2 and "unknown model" in err
    code, err = run_cli(capsys, "train", "--model-module", str(tmp_path / "nowhere.py"), "--model", "wrn40_4",
                        "--output", str(tmp_path / "r3"))
    assert code == 2 and "no such file" in err
    code, err = run_cli(capsys, "train", "--model", "vmamba_femto", "--stop-after-minutes", "-1")
    assert code == 2 and "--stop-after-minutes must be >= 0" in err
    code, err = run_cli(capsys, "train", "--model", "vmamba_femto", "--val-holdout", "-5")
    assert code == 2 and "--val-holdout is a number of training images" in err
    code, err = run_cli(capsys, "train", *TINY, "--device", "cpu", "--val-holdout", "60000",
                        "--output", str(tmp_path / "h"))
    assert code == 2 and "hold out fewer" in err
    code, err = run_cli(capsys, "train", "--model", "vmamba_femto", "--sam-rho", "-0.05")
    assert code == 2 and "--sam-rho must be >= 0" in err
    code, err = run_cli(capsys, "train", "--model", "vmamba_femto", "--sam-rho", "0.05", "--sam-start-epoch", "0")
    assert code == 2 and "--sam-start-epoch counts from 1" in err
    code, err = run_cli(capsys, "train", "--model", "vmamba_femto", "--cuda-graphs", "--compile")
    assert code == 2 and "exclude each other" in err
    code, err = run_cli(capsys, "train", *TINY, "--device", "cpu", "--cuda-graphs", "--output", str(tmp_path / "g"))
    assert code == 2 and "--cuda-graphs needs one CUDA device" in err


@needs_data
def test_diverged_run_is_reported(tmp_path, capsys):
    """SGD at lr 5 without clipping blows the loss up, then to NaN. The epoch's train loss is the mean of its finite
    losses only (the same as the step window's over the whole epoch, not diluted by the non-finite steps as zeros),
    NaN when none is finite, and an epoch above 1.5 x ln(classes) is called diverged."""
    from vssm.cli import main

    out = tmp_path / "run"
    args = ["train", *TINY, "--opt", "sgd", "--lr", "5", "--clip-grad", "0", "--warmup-epochs", "0", "--amp", "none",
            "--log-interval", "8", "--no-plot", "--threads", "1", "--output", str(out)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    windows = {r["epoch"]: r["loss"] for r in records if r["type"] == "step"}  # one window per epoch
    assert [r["epoch"] for r in epochs] == [1, 2] and sorted(windows) == [1, 2]
    assert epochs[0]["nonfinite_losses"] > 0, "the run was meant to overflow"
    for r in epochs:
        loss = r["train_loss"]
        if r["nonfinite_losses"] == 8:
            assert math.isnan(loss) and math.isnan(windows[r["epoch"]])
        else:
            assert loss == pytest.approx(windows[r["epoch"]], rel=1e-9)
        diverged = f"the train loss of epoch {r['epoch']} ("
        assert (diverged in stdout) == (loss > 1.5 * math.log(10)), stdout  # NaN: the non-finite warning only
    assert "training has diverged. Lower --lr" in stdout
    # the end of the run sums it up, after the epochs' warnings have scrolled away
    summary = json.loads((out / "summary.json").read_text())
    assert summary["diverged_epochs"] == [r["epoch"] for r in epochs if not r["train_loss"] <= 1.5 * math.log(10)]
    assert summary["diverged_epochs"] and summary["nonfinite_losses"] > 0
    weights_finite = all(torch.isfinite(t).all() for t in weights(out).values())
    assert summary["weights_finite"] == weights_finite
    tail = stdout[stdout.index("warning: this run did not train cleanly"):]
    assert "non-finite losses" in tail and "diverged train loss" in tail and "done: final Acc@1" in tail
    assert ("NaN or inf in the exported weights" in tail) == (not weights_finite)


def test_health_warning_names_each_problem():
    from vssm.train.engine import _health_warning

    clean = {"nonfinite_losses": 0, "diverged_epochs": [], "weights_finite": True}
    assert _health_warning(clean, torch.bfloat16) is None
    bad = {"nonfinite_losses": 3, "diverged_epochs": list(range(4, 12)), "weights_finite": False}
    text = _health_warning(bad, None)
    assert "3 non-finite losses" in text and "(epochs 4, 5, 6, 7, 8 and 3 more)" in text
    assert "NaN or inf in the exported weights" in text and "fp16" not in text
    assert "(epoch 7)" in _health_warning(dict(clean, diverged_epochs=[7]), None)
    assert "prefer --amp bf16 to fp16" in _health_warning(dict(clean, nonfinite_losses=1), torch.float16)


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(str(path), b"old")
    atomic_write(str(path), b"new contents")
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_weight_decay_groups():
    """Default: no decay on norms, biases and the SSM's A_logs / Ds / dt biases (model.no_weight_decay()); the
    official preset decays A_logs and dt_projs_bias as the official code does (spec §9)."""
    from vssm.train.config import DEFAULTS, PRESETS
    from vssm.train.engine import _make_optimizer

    model = vssm.create_model("vmamba_femto", num_classes=10, in_chans=1)
    names = {id(p): n for n, p in model.named_parameters()}

    def decayed(cfg):
        opt = _make_optimizer(cfg, model, 1e-3)
        return {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}

    ours = decayed(dict(DEFAULTS, **PRESETS["fashion-mnist"]))
    official = decayed(dict(DEFAULTS, **PRESETS["official"]))
    assert not any(n.endswith(("A_logs", "Ds", "dt_projs_bias", ".bias")) or "norm" in n for n in ours)
    assert any(n.endswith("A_logs") for n in official) and any(n.endswith("dt_projs_bias") for n in official)
    assert not any(n.endswith(("Ds", ".bias")) for n in official)
    assert ours | {n for n in official if n.endswith(("A_logs", "dt_projs_bias"))} == official


def test_train_with_sam_steps_from_the_perturbed_point(tmp_path, monkeypatch):
    """--sam-rho: from --sam-start-epoch on, every step runs a second forward on the same batch at the perturbed
    weights, and the optimizer steps from the restored weights with exactly that pass's gradient, recomputed here
    independently (the update rule itself: tests/test_sam.py); the epochs before take plain steps."""
    from vssm.cli import main
    from vssm.train import engine

    calls = []  # (model, input) of every training forward of the model
    targets = []  # what the loss was given

    real_call, real_loss, real_step = nn.Module.__call__, nn.CrossEntropyLoss.forward, torch.optim.AdamW.step

    def recording_call(module, *args, **kwargs):
        if module.training and hasattr(module, "forward_features") and torch.is_grad_enabled():
            calls.append((module, args[0].detach().clone()))
        return real_call(module, *args, **kwargs)

    def recording_loss(criterion, logits, target):
        targets.append(target.clone())
        return real_loss(criterion, logits, target)

    events = []

    class Recording(engine.SharpnessAware):
        def restore(self):
            model, x = calls[-1]
            with torch.enable_grad():
                loss = nn.functional.cross_entropy(real_call(model, x).float(), targets[-1], label_smoothing=0.1)
                expected = torch.autograd.grad(loss, self.params)
            for p, g in zip(self.params, expected):
                torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
            events.append(("restore", {id(p): p.grad.clone() for p in self.params}))
            super().restore()

    def recording_step(opt, *args, **kwargs):
        events.append(("step", {id(p): p.grad.clone() for g in opt.param_groups for p in g["params"]}))
        return real_step(opt, *args, **kwargs)

    monkeypatch.setattr(engine, "SharpnessAware", Recording)
    monkeypatch.setattr(nn.Module, "__call__", recording_call)
    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", recording_loss)
    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    args = ["train", *TINY, "--epochs", "2", "--limit-train-batches", "3", "--no-plot", "--progress", "none",
            "--threads", "1", "--amp", "none", "--clip-grad", "0", "--smoothing", "0.1", "--sam-rho", "0.5",
            "--sam-start-epoch", "2", "--output", str(tmp_path / "run")]
    assert main(args) == 0
    assert [kind for kind, _ in events] == ["step"] * 3 + ["restore", "step"] * 3
    assert len(calls) == 3 + 6 and len(targets) == 3 + 6
    for i in range(3):
        first, second = 3 + 2 * i, 4 + 2 * i
        assert torch.equal(calls[first][1], calls[second][1]) and torch.equal(targets[first], targets[second])
        sharp, step = events[3 + 2 * i][1], events[4 + 2 * i][1]
        assert step.keys() == sharp.keys() and all(torch.equal(step[k], sharp[k]) for k in step)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["sam_rho"] == 0.5


def test_compile_mode_reaches_torch_compile(tmp_path, monkeypatch, capsys):
    """--compile --compile-mode reduce-overhead hands the mode to torch.compile (recorded here instead of compiling:
    the compilation itself needs a C++ compiler on CPU and is measured on the GPU, benchmarks/profile_step.py)."""
    from vssm.cli import main

    modes = []

    def fake_compile(model, mode=None, **kwargs):
        modes.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    args = ["train", *TINY, "--epochs", "1", "--no-plot", "--progress", "none", "--threads", "1",
            "--output", str(tmp_path / "run"), "--compile", "--compile-mode", "reduce-overhead"]
    assert main(args) == 0
    assert modes == ["reduce-overhead"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["compile"] is True and config["compile_mode"] == "reduce-overhead"
