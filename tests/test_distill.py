"""Knowledge distillation (`vssm train --teacher FILE`): the tempered KL term, the teacher's view of the student's
batches (its own size and normalisation), the loss the optimizer steps on, a student that learns the classes from
a teacher alone, and clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vssm
from conftest import needs_data, run_cli, run_vssm
from vssm.train.distill import Teacher, distillation_loss

FEMTO = ["--model", "vmamba_femto", "--model-kwargs", '{"dims": [16, 32, 64], "depths": [1, 1, 1]}']
QUIET = ["--no-tensorboard", "--no-plot", "--progress", "none", "--threads", "1"]


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_distillation_loss_is_the_tempered_kl_and_its_gradient(temperature):
    g = torch.Generator().manual_seed(7)
    student = (3 * torch.randn(6, 10, generator=g)).requires_grad_(True)
    teacher = 3 * torch.randn(6, 10, generator=g)
    t = temperature
    p_t = torch.softmax(teacher / t, dim=-1)
    expected = (p_t * (torch.log(p_t) - torch.log_softmax(student / t, dim=-1))).sum(-1).mean() * t * t
    loss = distillation_loss(student, teacher, t)
    torch.testing.assert_close(loss, expected)
    # d/ds of T^2 KL(p_t || softmax(s / T)) averaged over the batch is T (softmax(s / T) - p_t) / B
    (grad,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(grad, t * (torch.softmax(student / t, -1) - p_t) / student.shape[0])
    assert distillation_loss(teacher, teacher, t).abs().item() < 1e-6
    # bf16 logits (autocast) are scored in fp32
    assert distillation_loss(student.bfloat16(), teacher.bfloat16(), t).dtype == torch.float32


class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        self.seen.append(x)
        return self.drop(x.mean(dim=(2, 3)).repeat(1, 5))


def test_teacher_sees_its_own_size_and_normalisation_in_eval_mode():
    """A student batch at 56 px normalised with (0.5, 0.25) reaches a 28 px teacher trained with (0.3, 0.4) as the
    raw image, resized, in the teacher's normalisation; the teacher stays in eval mode (dropout off) and
    gradient-free when the training loop calls .train()."""
    raw = torch.rand(2, 2, 56, 56)
    student_mean, student_std, teacher_mean, teacher_std = [0.5, 0.5], [0.25, 0.25], [0.3, 0.2], [0.4, 0.5]
    x = (raw - torch.tensor(student_mean).view(1, -1, 1, 1)) / torch.tensor(student_std).view(1, -1, 1, 1)
    recorder = _Recorder()
    teacher = Teacher(recorder, 28, student_mean, student_std, teacher_mean, teacher_std).train()
    assert not recorder.training and not any(p.requires_grad for p in teacher.parameters())
    out = teacher(x.requires_grad_(True))
    small = F.interpolate(raw, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    want = (small - torch.tensor(teacher_mean).view(1, -1, 1, 1)) / torch.tensor(teacher_std).view(1, -1, 1, 1)
    torch.testing.assert_close(recorder.seen[-1], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, want.mean(dim=(2, 3)).repeat(1, 5))  # no dropout
    assert not out.requires_grad
    # the same size and statistics: the batch as it is
    same = Teacher(_Recorder(), 56, student_mean, student_std, student_mean, student_std)
    same(x)
    assert torch.equal(same.model.seen[-1], x)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """vmamba_femto trained at 28 px on 3,000 images for 2 epochs (about 75% top-1)."""
    out = tmp_path_factory.mktemp("distill") / "teacher"
    run_vssm("train", "--preset", "fashion-mnist-cpu", "--train-subset", "3000", "--val-subset", "1000",
             "--epochs", "2", "--batch-size", "64", "--warmup-epochs", "0.2", *QUIET, "--output", str(out),
             timeout=600, check=True)
    return out


@needs_data
def test_training_steps_on_the_blended_loss(teacher_run, tmp_path, monkeypatch):
    """Every step's loss is (1 - w) * the label loss + w * the KL term, whose teacher logits are the teacher's
    weights applied here, independently, to the student's 32 px batch resized to the teacher's 28 px."""
    from vssm.cli import main
    from vssm.train import engine

    teacher = vssm.create_model("vmamba_femto", num_classes=10, in_chans=1)
    vssm.load_checkpoint(teacher, str(teacher_run / "model.safetensors"))
    teacher.eval()
    inputs, label_losses, terms, stepped = [], [], [], []
    real_call, real_ce, real_kd, real_backward = nn.Module.__call__, nn.CrossEntropyLoss.forward, \
        engine.distillation_loss, torch.Tensor.backward

    def recording_call(module, *args, **kwargs):
        if module.training and hasattr(module, "forward_features") and torch.is_grad_enabled():
            inputs.append(args[0].detach().clone())
        return real_call(module, *args, **kwargs)

    def recording_ce(criterion, logits, target):
        label_losses.append(real_ce(criterion, logits, target))
        return label_losses[-1]

    def recording_kd(student_logits, teacher_logits, temperature):
        terms.append((teacher_logits.detach().clone(), real_kd(student_logits, teacher_logits, temperature)))
        return terms[-1][1]

    def recording_backward(tensor, *args, **kwargs):
        stepped.append(tensor.detach().clone())
        return real_backward(tensor, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "__call__", recording_call)
    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", recording_ce)
    monkeypatch.setattr(engine, "distillation_loss", recording_kd)
    monkeypatch.setattr(torch.Tensor, "backward", recording_backward)
    args = ["train", *FEMTO, "--img-size", "32", "--train-subset", "256", "--val-subset", "100", "--batch-size", "32",
            "--epochs", "1", "--limit-train-batches", "3", "--amp", "none", "--smoothing", "0.1", *QUIET,
            "--teacher", str(teacher_run / "model.safetensors"), "--distill-weight", "0.7",
            "--distill-temperature", "2", "--output", str(tmp_path / "run")]
    assert main(args) == 0
    assert len(inputs) == len(terms) == len(stepped) == 3 and len(label_losses) >= 3
    for x, (teacher_logits, kd), label_loss, loss in zip(inputs, terms, label_losses, stepped):
        assert x.shape[-1] == 32
        with torch.no_grad():
            small = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
            torch.testing.assert_close(teacher_logits, real_call(teacher, small), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(loss, 0.3 * label_loss.detach() + 0.7 * kd.detach())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["teacher"].endswith("model.safetensors") and config["distill_weight"] == 0.7


@needs_data
def test_teacher_from_a_training_checkpoint_is_its_exported_ema_weights(teacher_run):
    """A training checkpoint records no normalisation, only its data: the teacher it makes (EMA weights,
    Fashion-MNIST's statistics) scores a batch exactly as the one from the run's exported weights."""
    from vssm.data.build import data_info
    from vssm.train.distill import load_teacher

    info = data_info({"data": "fashion-mnist", "img_size": 32})
    x = torch.randn(4, 1, 32, 32)
    logits = [load_teacher(str(path), 10, 1, info.mean, info.std, torch.device("cpu"))(x)
              for path in (teacher_run / "model.safetensors", teacher_run / "checkpoints" / "last.pth")]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)


def _permuted_copy(src: Path, dst: Path, perm: torch.Tensor) -> None:
    """The exported weights of ``src`` with the classifier's rows permuted: class c scores as class perm[c]."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    model = vssm.create_model(meta["model"], num_classes=10, in_chans=1, **json.loads(meta["model_kwargs"]))
    head = model.get_classifier()
    names = {id(p): n for n, p in model.named_parameters()}
    for p in (head.weight, head.bias):
        rows = tensors[names[id(p)]]
        tensors[names[id(p)]] = rows[torch.argsort(perm)]  # new row perm[c] = old row c
    save_file(tensors, str(dst), metadata=meta)


@needs_data
def test_student_learns_the_teachers_classes_not_the_labels(teacher_run, tmp_path):
    """--distill-weight 1: the labels have no say. A teacher whose class scores are permuted (class c reported as
    perm[c]) makes a student that, scored with the true labels, is near chance, and, with its own head's rows put
    back, is well above it: it learnt what the teacher says, at its own input size (32 px; the teacher's is 28)."""
    perm = torch.roll(torch.arange(10), 3)
    permuted = tmp_path / "permuted.safetensors"
    _permuted_copy(teacher_run / "model.safetensors", permuted, perm)
    student = tmp_path / "student"
    run_vssm("train", "--preset", "fashion-mnist-cpu", *FEMTO, "--img-size", "32", "--train-subset", "3000",
             "--val-subset", "1000", "--epochs", "2", "--batch-size", "64", "--warmup-epochs", "0.2", *QUIET,
             "--teacher", str(permuted), "--distill-weight", "1", "--distill-temperature", "2",
             "--output", str(student), timeout=600, check=True)
    as_trained = json.loads((student / "summary.json").read_text())["final"]["acc1"]
    restored = tmp_path / "restored.safetensors"
    _permuted_copy(student / "model.safetensors", restored, torch.argsort(perm))
    run_vssm("eval", "--checkpoint", str(restored), "--val-subset", "1000", "--print-freq", "0",
             "--json", str(tmp_path / "e.json"), check=True)
    unpermuted = json.loads((tmp_path / "e.json").read_text())["acc1"]
    assert as_trained < 25.0 and unpermuted > 45.0, (as_trained, unpermuted)


@needs_data
def test_clear_errors(teacher_run, tmp_path, capsys):
    tiny = [*FEMTO, "--img-size", "28", "--train-subset", "64", "--val-subset", "50", "--batch-size", "32",
            "--epochs", "1", *QUIET]
    code, err = run_cli(capsys, "train", "--model", "vmamba_femto", "--distill-weight", "1.5")
    assert code == 2 and "--distill-weight is the soft term's share" in err
    code, err = run_cli(capsys, "train", "--model", "vmamba_femto", "--distill-temperature", "0")
    assert code == 2 and "--distill-temperature must be > 0" in err
    code, err = run_cli(capsys, "train", "--model", "vmamba_femto", "--teacher-model", "resnet18")
    assert code == 2 and "give --teacher too" in err
    code, err = run_cli(capsys, "train", *tiny, "--teacher", str(tmp_path / "missing.safetensors"),
                        "--output", str(tmp_path / "a"))
    assert code == 2 and "checkpoint not found" in err
    # weights in a foreign layout do not say which model they hold
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": vssm.create_model("vmamba_femto", num_classes=10, in_chans=1).state_dict()}, foreign)
    code, err = run_cli(capsys, "train", *tiny, "--teacher", str(foreign), "--output", str(tmp_path / "b"))
    assert code == 2 and "does not say which model it holds" in err
    # a teacher for 3-channel inputs cannot score the 1-channel student's batches
    code, err = run_cli(capsys, "train", *tiny, "--in-chans", "3", "--teacher", str(teacher_run / "model.safetensors"),
                        "--output", str(tmp_path / "c"))
    assert code == 2 and "1 input channels, the student's data 10 and 3" in err
