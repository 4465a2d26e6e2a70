#!/usr/bin/env python
"""Count the aten calls of one block's training forward + backward: the host-bound training step pays for each.

Runs on the CPU with the fused scan path (TRITON_INTERPRET=1, ``scan_backend="triton"``) under autocast; the CUDA
path differs in its LayerNorm (a Triton kernel there) and in calling the scan through an autograd.Function instead
of the custom op, so the counts are those of the GPU step up to those two. The backward's gradient accumulation into
``.grad`` (one ``add_`` per parameter from the second step on) is counted: the protocol's step accumulates too.

    PYTHONPATH=. python benchmarks/op_census.py --model vmamba_tiny_s1l8 --stage 0 --block 0 [--list]
"""
from __future__ import annotations

import argparse
import collections
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import timm  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import vssm  # noqa: E402

VIEWS = {"permute", "view", "t", "_unsafe_view", "expand", "detach", "reshape", "transpose", "unsqueeze", "squeeze"}


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def census(model_name: str, stage: int, block: int, dtype: torch.dtype, size: int) -> dict:
    """aten calls of one forward and one backward of ``layers[stage].blocks[block]`` (second step: grads exist)."""
    if model_name in vssm.list_models():
        model = vssm.create_model(model_name, num_classes=10, scan_backend="triton").train()
    else:  # a timm peer (Swin-T: its blocks take (B, H, W, C))
        model = timm.create_model(model_name, num_classes=10).train()
    blk = model.layers[stage].blocks[block]
    dim = next(p for p in blk.parameters() if p.dim() == 1).shape[0]  # the first norm's width
    if getattr(getattr(blk, "op", None), "channel_first", False):  # a VSS block of an ln2d model
        x = torch.randn(2, dim, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
    else:
        x = torch.randn(2, size, size, dim, requires_grad=True)

    def forward():
        with torch.autocast("cpu", dtype=dtype):
            return blk(x)

    y = forward()  # the first step creates the .grad tensors that later steps accumulate into
    gy = torch.ones_like(y)
    y.backward(gy)
    with _Recorder() as rec:
        y = forward()
        n_fwd = len(rec.ops)
        y.backward(gy)
    return {"forward": rec.ops[:n_fwd], "backward": rec.ops[n_fwd:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vmamba_tiny_s1l8", help="a vssm model or a timm one with layers[i].blocks[j]")
    p.add_argument("--stage", type=int, default=0)
    p.add_argument("--block", type=int, default=0)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--size", type=int, default=14, help="map side (a multiple of Swin's window 7; the counts do not "
                   "depend on it otherwise)")
    p.add_argument("--list", action="store_true", help="also print the calls in order")
    args = p.parse_args()
    result = census(args.model, args.stage, args.block, getattr(torch, args.dtype), args.size)
    print(f"{args.model} layers[{args.stage}].blocks[{args.block}], autocast {args.dtype}, fused scan path")
    print("| pass | aten calls | views (permute, view, t, ...) | casts (_to_copy) | grad accumulation (add_) |")
    print("|---|---|---|---|---|")
    for name, ops in result.items():
        c = collections.Counter(ops)
        views = sum(c[v] for v in VIEWS)
        print(f"| {name} | {len(ops)} | {views} | {c['_to_copy']} | {c['add_'] if name == 'backward' else '-'} |")
    if args.list:
        for name, ops in result.items():
            print(f"{name}: {' '.join(ops)}")


if __name__ == "__main__":
    main()
