"""Time Fashion-MNIST's training batches with and without RandAugment, eager and compiled, on one device.

    PYTHONPATH=. python3 benchmarks/rand_augment_speed.py [--policy rand-m9-mstd0.5-inc1] [--batch 512] [--steps 60]

Each variant draws, augments and normalises `--steps` batches of the preset's pipeline (64 px, shifts of 3 px,
flips, random erasing 0.5) from the training images held on the device, after a warm-up of 10 batches (which
includes the compilation); the device is synchronised once at the end of each timed loop. Results in
benchmarks/results/fashion-mnist.md.
"""
from __future__ import annotations

import argparse
import time

import torch

from vssm.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, read_fashion_mnist
from vssm.data.rand_augment import RandAugmentPolicy
from vssm.data.tensor_loader import TensorAugment, TensorTrainLoader


def time_batches(augment: TensorAugment, images: torch.Tensor, labels: torch.Tensor, batch: int, steps: int,
                 device: torch.device) -> float:
    """Milliseconds per batch, the device work included."""
    loader = TensorTrainLoader(images, labels, batch, 64, 1, FASHION_MNIST_MEAN, FASHION_MNIST_STD, augment, seed=0)
    batches = loader.iter_epoch(0)
    for _ in range(10):
        next(batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        x, _ = next(batches)
    x.sum().item()  # waits for the last batch
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="rand-m9-mstd0.5-inc1")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    images, labels = (torch.from_numpy(a).to(device) for a in read_fashion_mnist("train"))
    policy = RandAugmentPolicy.parse(args.policy)
    base = dict(translate=3, hflip=0.5, reprob=0.5, remode="pixel")
    variants = {
        "preset (no RandAugment)": TensorAugment(**base),
        f"{args.policy}, eager": TensorAugment(**base, rand_augment=policy),
        f"{args.policy}, compiled": TensorAugment(**base, rand_augment=policy, compile_rand_augment=True),
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, batch {args.batch}, {args.steps} timed batches")
    print("| pipeline | ms per batch | images/s |")
    print("|---|---|---|")
    for label, augment in variants.items():
        ms = time_batches(augment, images, labels, args.batch, args.steps, device)
        print(f"| {label} | {ms:.2f} | {args.batch / ms * 1e3:,.0f} |")


if __name__ == "__main__":
    main()
