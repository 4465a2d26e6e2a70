"""Batched RandAugment (vssm/data/rand_augment.py) against timm's per-image RandAugment and PIL's operations."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
import timm.data.auto_augment as timm_aa

from conftest import needs_data, requires_cuda, run_vssm
from vssm.data.rand_augment import LEVELS, RandAugmentPolicy, affine_map, apply_op, op_argument, rand_augment_ops
from vssm.data.rand_augment import _warp
from vssm.data.tensor_loader import TensorAugment, TensorTrainLoader

GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def clothes(n: int, channels: int = 1, size=(28, 28), seed: int = 0) -> torch.Tensor:
    """(n, C, H, W) uint8 levels as float: smooth shapes, black rows at the top, and a sharp corner."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand((n, channels, 7, 6), generator=gen) * 255
    x = torch.nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False)
    x[..., :3, :] = 0
    x[..., -4:, -4:] = 255
    return x.round().clamp(0, 255)


def pil_reference(name: str, levels: torch.Tensor, arg) -> torch.Tensor:
    """timm's own operation, image by image, on PIL images (geometric ones bilinear with a black fill)."""
    out = []
    for image in levels:
        array = image.permute(1, 2, 0).numpy().astype(np.uint8)
        pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        op = timm_aa.NAME_TO_OP[name]
        if name in GEOMETRIC:
            fill = 0 if pil.mode == "L" else (0, 0, 0)
            result = op(pil, arg, fillcolor=fill, resample=Image.BILINEAR)
        else:
            result = op(pil) if arg is None else op(pil, arg)
        result = torch.from_numpy(np.array(result)).float()
        out.append(result[None] if result.dim() == 2 else result.permute(2, 0, 1))
    return torch.stack(out)


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m7-n3-p0.8", "rand-m5-mstd101", "rand-n1-mmax8-inc0",
                                    "rand", "rand-inc1-m10-mstd1.5"])
def test_policy_reads_as_timm_reads_it(policy):
    ours = RandAugmentPolicy.parse(policy)
    theirs = timm_aa.rand_augment_transform(policy, {"translate_const": 250, "img_mean": (0, 0, 0)})
    assert ours.num_layers == theirs.num_layers
    assert ours.ops == [op.name for op in theirs.ops]
    for op in theirs.ops:
        assert (op.prob, op.magnitude, op.magnitude_std) == (ours.prob, ours.magnitude, ours.magnitude_std)
        assert (op.magnitude_max or LEVELS) == (ours.magnitude_max or LEVELS)


@pytest.mark.parametrize("policy, message", [
    ("original", "RandAugment policies only"),
    ("augmix-m5-w4-d2", "RandAugment policies only"),
    ("rand-tweights", "cannot read 'tweights'"),
    ("rand-m9-x3", "cannot read 'x3'"),
    ("rand-p1.5", "p is a probability"),
])
def test_policy_errors_say_what_to_write(policy, message):
    with pytest.raises(ValueError, match=message):
        RandAugmentPolicy.parse(policy)


@pytest.mark.parametrize("name", sorted(set(rand_augment_ops(False) + rand_augment_ops(True))))
@pytest.mark.parametrize("magnitude", [0.0, 2.7, 9.0, 10.0])
@pytest.mark.parametrize("negate", [False, True])
def test_arguments_match_timm(name, magnitude, negate, monkeypatch):
    level_fn = timm_aa.LEVEL_TO_ARG[name]
    ours = op_argument(name, torch.tensor([magnitude]), torch.tensor([-1.0 if negate else 1.0])).item()
    if level_fn is None:
        assert ours == 0.0
        return
    monkeypatch.setattr(timm_aa.random, "random", lambda: 0.9 if negate else 0.1)
    (theirs,) = level_fn(magnitude, {})
    assert ours == pytest.approx(theirs, abs=1e-6)


COLOUR_CASES = [("AutoContrast", None), ("Equalize", None), ("Invert", None), ("Posterize", 1), ("Posterize", 3),
                ("Solarize", 26), ("Solarize", 200), ("SolarizeAdd", 99), ("Contrast", 0.1), ("Contrast", 1.9),
                ("Brightness", 0.4), ("Brightness", 1.7), ("Sharpness", 0.1), ("Sharpness", 1.9), ("Color", 0.3),
                ("Color", 1.8)]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name, arg", COLOUR_CASES)
def test_pixel_operations_match_pil(name, arg, channels):
    """Every level as PIL computes it (its truncations and rounding included); RGB within one level, since PIL's
    fixed-point grey conversion rounds a few pixels differently."""
    levels = clothes(5, channels)
    ours = apply_op(name, levels, torch.full((5,), float(arg or 0)))
    diff = (ours - pil_reference(name, levels, arg)).abs()
    assert diff.max() <= (0 if channels == 1 else 1), (name, arg, diff.max())


def test_equalize_and_autocontrast_leave_flat_images_alone():
    flat = torch.full((2, 1, 8, 8), 77.0)
    nearly = flat.clone()
    nearly[1, 0, 0, 0] = 78.0  # PIL's step is 0 here too
    for name in ("Equalize", "AutoContrast"):
        out = apply_op(name, torch.cat([flat, nearly]), torch.zeros(4))
        ref = pil_reference(name, torch.cat([flat, nearly]), None)
        assert torch.equal(out, ref), name


@pytest.mark.parametrize("size", [(28, 28), (17, 23)])
@pytest.mark.parametrize("name, arg", [("Rotate", 21.0), ("Rotate", -30.0), ("ShearX", 0.27), ("ShearY", -0.3),
                                       ("TranslateXRel", 0.405), ("TranslateYRel", -0.2), ("TranslateXRel", -0.05)])
def test_geometric_operations_match_pil(name, arg, size):
    """Within one level everywhere, edges included: the same direction, centre, and fill rule as PIL's affine."""
    levels = clothes(4, 1, size)
    ops = rand_augment_ops(True)
    ours = _warp(levels, affine_map(torch.full((4,), ops.index(name)), torch.full((4,), arg), ops, size))
    diff = (ours - pil_reference(name, levels, arg)).abs()
    assert diff.max() <= 1, (name, arg, diff.max())
    assert not torch.equal(ours, levels)


def test_draws_follow_the_policy():
    gen = torch.Generator().manual_seed(0)
    draw = RandAugmentPolicy.parse("rand-m9-n2-mstd0.5").draw(30000, gen, torch.device("cpu"))
    assert draw["ra_op"].shape == (30000, 2)
    counts = torch.bincount(draw["ra_op"].flatten(), minlength=15).float()
    assert counts.numel() == 15 and (counts / counts.mean() - 1).abs().max() < 0.06
    assert abs(draw["ra_apply"].float().mean().item() - 0.5) < 0.01
    assert abs(draw["ra_sign"].mean().item()) < 0.02
    mag = draw["ra_magnitude"]
    assert mag.max() <= 10.0 and abs(mag.mean().item() - 9.0) < 0.02 and 0.4 < mag.std().item() < 0.5
    uniform = RandAugmentPolicy.parse("rand-m6-mstd200").draw(30000, gen, torch.device("cpu"))["ra_magnitude"]
    assert uniform.min() >= 0 and uniform.max() <= 6 and abs(uniform.mean().item() - 3.0) < 0.05
    fixed = RandAugmentPolicy.parse("rand-m12-mmax11").draw(100, gen, torch.device("cpu"))["ra_magnitude"]
    assert torch.all(fixed == 11.0)


def test_batch_applies_each_images_own_layers():
    """The batched pass equals running each image through its own drawn operations, one layer after the other."""
    policy = RandAugmentPolicy.parse("rand-m8-n3-p0.9-mstd1-inc1")
    levels = clothes(48, 1, seed=1)
    params = policy.draw(48, torch.Generator().manual_seed(4), torch.device("cpu"))
    batched = policy.apply(levels / 255, params) * 255
    assert len(set(params["ra_op"][params["ra_apply"]].tolist())) >= 12  # most operations were exercised
    for i in range(48):
        image = levels[i : i + 1]
        for layer in range(3):
            if not params["ra_apply"][i, layer]:
                continue
            name = policy.ops[params["ra_op"][i, layer]]
            arg = op_argument(name, params["ra_magnitude"][i : i + 1, layer], params["ra_sign"][i : i + 1, layer])
            if name in GEOMETRIC:
                image = _warp(image, affine_map(torch.tensor([policy.ops.index(name)]), arg, policy.ops, (28, 28)))
            else:
                image = apply_op(name, image, arg)
        assert torch.allclose(batched[i : i + 1], image, atol=1e-3), i


def test_loader_with_rand_augment_splits_ranks_and_resumes_exactly():
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    labels = torch.arange(64) % 10
    aug = TensorAugment(translate=2, hflip=0.5, reprob=0.5, rand_augment=RandAugmentPolicy.parse("rand-m9-mstd0.5"))
    plain = TensorAugment(translate=2, hflip=0.5, reprob=0.5)
    one = TensorTrainLoader(images, labels, 16, 32, 1, (0.5,), (0.25,), aug, seed=1)
    two = [TensorTrainLoader(images, labels, 8, 32, 1, (0.5,), (0.25,), aug, seed=1, rank=r, world_size=2)
           for r in range(2)]
    for (x, _), (x0, _), (x1, _) in zip(one.iter_epoch(3), two[0].iter_epoch(3), two[1].iter_epoch(3)):
        assert torch.equal(torch.cat([x0, x1]), x)
    full = list(one.iter_epoch(5))
    tail = list(one.iter_epoch(5, start_step=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], tail))
    without = next(TensorTrainLoader(images, labels, 16, 32, 1, (0.5,), (0.25,), plain, seed=1).iter_epoch(5))[0]
    assert not torch.equal(without, full[0][0])


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_rand_augment_on_the_gpu_matches_the_cpu_and_never_syncs(compiled):
    """Eager, or fused by torch.compile as `vssm train --compile` runs it on a GPU: the CPU's levels, up to one
    level where a rounding boundary falls differently, and no stream synchronisation once compiled."""
    policy = RandAugmentPolicy.parse("rand-m9-n2-mstd0.5-inc1")
    levels = clothes(256, 1, seed=2)
    params = policy.draw(256, torch.Generator().manual_seed(0), torch.device("cpu"))
    cpu = policy.apply(levels / 255, params)
    augment = TensorAugment(rand_augment=policy, compile_rand_augment=compiled)
    on_gpu = {k: v.cuda() for k, v in params.items()}
    x = (levels / 255).cuda()
    augment.apply_before_resize(x.clone(), on_gpu)  # first call: compilation, lazy initialisation
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu = augment.apply_before_resize(x.clone(), on_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    diff = (gpu.cpu() - cpu).abs() * 255
    assert diff.max() <= 1.0 + 1e-3 and (diff > 0.5).float().mean() < 0.01


@needs_data
def test_train_with_rand_augment(tmp_path):
    out = tmp_path / "ra"
    proc = run_vssm("train", "--model", "vmamba_femto", "--model-kwargs", '{"dims": [16, 32, 64], "depths": [1, 1, 1]}',
                    "--img-size", "28", "--train-subset", "128", "--val-subset", "100", "--batch-size", "32",
                    "--epochs", "1", "--auto-augment", "rand-m9-mstd0.5-inc1", "--no-tensorboard", "--no-plot",
                    "--progress", "none", "--threads", "1", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["auto_augment"] == "rand-m9-mstd0.5-inc1"
    assert math.isfinite(json.loads((out / "summary.json").read_text())["history"][-1]["train_loss"])
    # the run's configuration builds a loader that runs the policy
    from types import SimpleNamespace
    from vssm.data.build import build_train_loader, data_info

    loader = build_train_loader(config, data_info(config), SimpleNamespace(rank=0, world_size=1), torch.device("cpu"))
    assert loader.augment.rand_augment == RandAugmentPolicy.parse("rand-m9-mstd0.5-inc1")
    proc = run_vssm("train", "--model", "vmamba_femto", "--auto-augment", "original", "--output", str(tmp_path / "x"))
    assert proc.returncode == 2 and "RandAugment policies only" in proc.stderr and "Traceback" not in proc.stderr
