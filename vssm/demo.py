"""`vssm demo`: build vmamba_tiny_s1l8 and classify real Fashion-MNIST test images with it (random weights)."""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import vssm
from vssm.data import read_fashion_mnist


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="vmamba_tiny_s1l8")
    parser.add_argument("--images", type=int, default=4, help="how many test images")
    parser.add_argument("--img-size", type=int, default=224)


def main(args: argparse.Namespace) -> int:
    images, labels = read_fashion_mnist("test")
    x = torch.from_numpy(images[: args.images]).float().div(255)[:, None].expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=args.img_size, mode="bilinear", align_corners=False)
    model = vssm.create_model(args.model).eval()
    params = sum(p.numel() for p in model.parameters())
    with torch.inference_mode():
        model(x[:1])  # warm-up
        start = time.perf_counter()
        logits = model(x)
        seconds = time.perf_counter() - start
    print(f"model      {args.model} ({params:,} parameters, random init)")
    print(f"input      {tuple(x.shape)} Fashion-MNIST test images, labels {labels[: args.images].tolist()}")
    print(f"output     {tuple(logits.shape)}")
    print(f"time       {seconds * 1000:.0f} ms for {len(x)} images on {x.device} ({torch.get_num_threads()} threads)")
    return 0
