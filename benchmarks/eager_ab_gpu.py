#!/usr/bin/env python
"""A/B of vssm's eager-mode host and layout choices, same process, same GPU, interleaved rounds. GPU only.

Variants of each vmamba model, measured with the benchmark protocol (batch 128, 224², bf16 inference and fp16
training) next to timm's Swin-T in every round:

- shipped: as released;
- conv: Linear2d as a 1x1 convolution (cuDNN adds the bias in a separate broadcast kernel) instead of the GEMM
  with the bias fused;
- dispatch: every call of the fused scan goes through its torch.library custom op (under autograd with the op's
  registered backward, as before Update 8) instead of launching the kernels directly (under autograd through an
  autograd.Function), and every LayerNorm through PyTorch's op instead of the kernels;
- plain_mlp: the MLP as fc2(act(fc1(x))), autograd keeping act's output too (no recompute in the backward);
- bwd16x2: the scan backward with 2 warps per program (the fourth session's config) instead of the shipped one in
  ``triton_ops.CONFIGS`` (16 positions, 1 warp);
- bias_add / bias_add_cast: every F.linear with a bias as the bare GEMM plus an in-place bias add (PyTorch's
  fused-bias GEMM goes through cuBLASLt, which costs more host time per call) / the same with the bias cast to the
  output's dtype first (an fp32 bias added into a bf16 map takes a slow mixed-dtype path: 5x the GEMM's time);
- strided: the plain scan (MSVMamba, Vim) with its positions addressed as a 2-D map's (``FLAT`` off in
  triton_scan, so the tiles are laid out for channel-contiguous maps), at the same launch configs;
- masked: every scan kernel masks its positions (``EVEN_L`` off) even where the length is a multiple of the chunk;
- ln_native / ln_all: LayerNorm under autograd always through PyTorch's op (the fifth session's choice) / always
  through the Triton kernels' autograd.Function, instead of the kernels from ``GRAD_KERNEL_MIN_ELEMENTS`` on;
  ln_minK: the kernels from 2^K elements on;
- fp32_dz: the fused scan's backward keeps dL/dz and its GEMMs in fp32 (``triton_ops.HALF_DZ`` off);
- bwd_z_gemm: the fused scan's backward reads Δ's pre-activation from a GEMM at every rank
  (``triton_ops.BWD_DT_GEMM_MIN_RANK`` 0) instead of projecting dt_low in-kernel;
- recompute_states: the fused scan's forward keeps no chunk-start states and the backward recomputes them with a
  forward pass (``triton_ops.KEEP_STATES`` off);
- triton_run: every Triton kernel launched through ``JITFunction.run`` (``triton_launch.ENABLED`` off) instead of
  vssm's launch cache;
- channel_first / channel_last: the model built in that layout (``channel_first=True / False``; same weights, same
  function) instead of the layout its norm_layer implies.

    PYTHONPATH=. python benchmarks/eager_ab_gpu.py --models vmamba_tiny_s1l8 --variants shipped,conv,dispatch
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Iterator

import timm
import torch
import torch.nn.functional as F

import vssm
from vssm import benchmark
from vssm.layers.common import Linear2d, Mlp
from vssm.ops import layer_norm, triton_launch, triton_ops


def _conv_forward(self: Linear2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, self.weight[:, :, None, None], self.bias)


def _plain_mlp_forward(self: Mlp, x: torch.Tensor) -> torch.Tensor:
    return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


_LINEAR = F.linear


def _linear_bias_add(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    y = _LINEAR(x, weight)
    return y if bias is None else y.add_(bias)


def _linear_bias_add_cast(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    y = _LINEAR(x, weight)
    return y if bias is None else y.add_(bias.to(y.dtype))


LAYOUTS = {"channel_first": dict(channel_first=True), "channel_last": dict(channel_first=False)}


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    flags, config = triton_ops._Scan.flags, triton_ops._Scan.config
    shipped = (Linear2d.forward, Mlp.forward, triton_ops.in_traced_context, layer_norm.in_traced_context,
               layer_norm.GRAD_KERNEL_MIN_ELEMENTS, dict(triton_ops.CONFIGS), triton_ops._Scan.flags,
               triton_ops._Scan.config, triton_ops.HALF_DZ, triton_ops.BWD_DT_GEMM_MIN_RANK, triton_ops.KEEP_STATES,
               triton_launch.ENABLED)
    if name == "conv":
        Linear2d.forward = _conv_forward
    elif name == "dispatch":
        triton_ops.in_traced_context = layer_norm.in_traced_context = lambda *tensors: True
    elif name == "plain_mlp":
        Mlp.forward = _plain_mlp_forward
    elif name == "bwd16x2":
        triton_ops.CONFIGS[True, True] = dict(triton_ops.CONFIGS[True, True], num_warps=2)
    elif name == "bias_add":
        F.linear = _linear_bias_add
    elif name == "bias_add_cast":
        F.linear = _linear_bias_add_cast
    elif name == "strided":
        triton_ops._Scan.flags = lambda self: dict(flags(self), FLAT=False)
    elif name == "masked":
        triton_ops._Scan.config = lambda self, backward=False: dict(config(self, backward), EVEN_L=False)
    elif name in ("ln_native", "ln_all"):
        layer_norm.GRAD_KERNEL_MIN_ELEMENTS = 1 << 62 if name == "ln_native" else 0
    elif name == "fp32_dz":
        triton_ops.HALF_DZ = False
    elif name == "bwd_z_gemm":
        triton_ops.BWD_DT_GEMM_MIN_RANK = 0
    elif name == "recompute_states":
        triton_ops.KEEP_STATES = False
    elif name == "triton_run":
        triton_launch.ENABLED = False
    elif name.startswith("ln_min") and name[6:].isdigit():
        layer_norm.GRAD_KERNEL_MIN_ELEMENTS = 1 << int(name[6:])
    elif name != "shipped" and name not in LAYOUTS:
        raise SystemExit(f"unknown variant {name!r}")
    try:
        yield
    finally:
        (Linear2d.forward, Mlp.forward, triton_ops.in_traced_context, layer_norm.in_traced_context,
         layer_norm.GRAD_KERNEL_MIN_ELEMENTS, configs, triton_ops._Scan.flags, triton_ops._Scan.config,
         triton_ops.HALF_DZ, triton_ops.BWD_DT_GEMM_MIN_RANK, triton_ops.KEEP_STATES, triton_launch.ENABLED) = shipped
        triton_ops.CONFIGS.update(configs)
        F.linear = _LINEAR


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8"])
    p.add_argument("--variants", default="shipped,conv,dispatch")
    p.add_argument("--modes", default="bf16,train_fp16")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--batch", type=int, default=128, help="a small batch (8) measures the host's cost per step")
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    swin = timm.create_model("swin_tiny_patch4_window7_224").cuda()
    names = args.variants.split(",")
    for model_name in args.models:
        shipped = vssm.create_model(model_name).cuda()
        models = {name: vssm.create_model(model_name, **LAYOUTS[name]).cuda() for name in names if name in LAYOUTS}
        for model in models.values():
            model.load_state_dict(shipped.state_dict())
        for r in range(args.rounds):
            for mode in args.modes.split(","):
                ref = benchmark.measure(swin, mode, batch=args.batch, warmup=args.warmup, iters=args.iters)["img_s"]
                cells = []
                for name in names:
                    with variant(name):
                        speed = benchmark.measure(models.get(name, shipped), mode, batch=args.batch, warmup=args.warmup,
                                                  iters=args.iters)["img_s"]
                    cells.append(f"{name} {speed:.0f} img/s ({speed / ref:.2f}x, {1e3 * args.batch / speed:.1f} ms)")
                print(f"round {r} {model_name} {mode}: " + " | ".join(cells) + f" | Swin-T {ref:.0f}", flush=True)


if __name__ == "__main__":
    main()
