"""Knowledge distillation from a trained teacher: ``vssm train --teacher FILE``.

The student learns from the labels and from the teacher's class probabilities softened by a temperature T
(Hinton et al., 2015, "Distilling the Knowledge in a Neural Network"):

    loss = (1 - w) * task_loss + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The T^2 keeps the soft term's gradients at the scale of the task term's whatever T is. The teacher is a file that
`vssm train` wrote (``model.safetensors`` or a training checkpoint): its model, classes, channels, input size and
normalisation are read from it. It runs in eval mode without gradients on the student's augmented (and mixed)
batch, resized to its own input size and renormalised to its own statistics, so a teacher trained at 28 px
can teach a student at 64 px.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Teacher", "distillation_loss", "load_teacher"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), the mean over the batch, computed in fp32.

    ``student_logits``, ``teacher_logits``: (B, num_classes)."""
    t = float(temperature)
    student = F.log_softmax(student_logits.float() / t, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)


class Teacher(nn.Module):
    """A frozen model that scores the student's batches at its own input size and normalisation.

    ``student_mean`` / ``student_std``: the normalisation the student's batches carry; ``teacher_mean`` /
    ``teacher_std``: the one the teacher was trained with; per channel."""

    def __init__(self, model: nn.Module, img_size: int, student_mean: Sequence[float], student_std: Sequence[float],
                 teacher_mean: Sequence[float], teacher_std: Sequence[float]):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.img_size = int(img_size)
        # x_teacher = (x * s_std + s_mean - t_mean) / t_std = x * scale + shift
        s_mean, s_std = torch.tensor(student_mean), torch.tensor(student_std)
        t_mean, t_std = torch.tensor(teacher_mean), torch.tensor(teacher_std)
        self.renormalise = not (torch.equal(s_mean, t_mean) and torch.equal(s_std, t_std))
        self.register_buffer("scale", (s_std / t_std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((s_mean - t_mean) / t_std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # always scores in eval mode (BatchNorm statistics, no dropout / drop path)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) student batch -> (B, num_classes) teacher logits."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.img_size)
        if self.renormalise:
            x = x * self.scale + self.shift
        return self.model(x)


def load_teacher(path: str, num_classes: int, in_chans: int, student_mean: Sequence[float],
                 student_std: Sequence[float], device: torch.device, model_name: Optional[str] = None) -> Teacher:
    """The teacher in ``path`` (a file `vssm train` wrote; its EMA weights when it has them), on ``device``.

    Raises ``UsageError`` when the file does not say which model it holds (and ``model_name`` is not given) or
    when its classes or channels differ from the student's data."""
    from ..checkpoint import load_checkpoint
    from .checkpointing import checkpoint_metadata, weights_key
    from .engine import UsageError, build_model

    meta: Dict[str, Any] = checkpoint_metadata(path)
    name = model_name or meta.get("model")
    if not name:
        raise UsageError(f"--teacher {path}: the file does not say which model it holds; give a model.safetensors or "
                         f"checkpoint that `vssm train` wrote, or name the model with --teacher-model")
    classes, chans = meta.get("num_classes") or num_classes, meta.get("in_chans") or in_chans
    if classes != num_classes or chans != in_chans:
        raise UsageError(f"--teacher {path}: the teacher has {classes} classes and {chans} input channels, the "
                         f"student's data {num_classes} and {in_chans}; distil from a teacher trained on the same data")
    img_size = meta.get("img_size")
    if not img_size:
        raise UsageError(f"--teacher {path}: the file does not record its input size; give a file that `vssm train` "
                         f"wrote")
    model = build_model(name, classes, chans, img_size, model_kwargs=meta.get("model_kwargs") or {},
                        model_module=meta.get("model_module"))
    load_checkpoint(model, path, key=weights_key(meta))
    mean, std = _normalisation(meta, model, chans)
    return Teacher(model, img_size, student_mean, student_std, mean, std).to(device)


def _normalisation(meta: Dict[str, Any], model: nn.Module, in_chans: int):
    """The mean and std the teacher was trained with: exported weights record them; a training checkpoint records
    its data, whose statistics are Fashion-MNIST's or, for an ImageFolder, the model's default ones."""
    if meta.get("mean") and meta.get("std"):
        return meta["mean"], meta["std"]
    from ..data.build import data_info
    from .config import is_fashion_mnist

    if is_fashion_mnist(meta.get("data") or ""):
        info = data_info({"data": "fashion-mnist", "in_chans": in_chans})
        return info.mean, info.std
    from timm.data import resolve_data_config

    resolved = resolve_data_config({}, model=model)
    return resolved["mean"], resolved["std"]
