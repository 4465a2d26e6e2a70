"""CPU: a model's depthwise convolutions with and without DepthwiseConv2d's explicit padding, side by side.

    PYTHONPATH=. python benchmarks/depthwise_conv_cpu.py [--model vmamba_femto] [--img-size 28] [--in-chans 1] \\
        [--batch 64] [--threads 2] [--rounds 6] [--json out.json]

1. Every DepthwiseConv2d of the model, at the input shape one forward gives it: forward + backward (input, weight
   and bias gradients) as the layer runs it (padding the map first where ``pads_explicitly`` says so) and as the
   plain 'same'-padded convolution.
2. The model's training step (forward, backward, AdamW on random data), both ways.
Rounds alternate the two ways so that a noisy host slows both alike; the medians are reported.
"""
from __future__ import annotations

import argparse
import statistics

import torch
# benchmarks/ is on sys.path when run as a script
from ab_cpu import parse_timing_args, print_setup, seconds_per_call, write_rows
from scan_cpu import training_step

import vssm
from vssm.layers import DepthwiseConv2d

EXPLICIT = DepthwiseConv2d.pads_explicitly


def use_explicit_padding(on: bool) -> None:
    DepthwiseConv2d.pads_explicitly = EXPLICIT if on else (lambda self, x: False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vmamba_femto")
    p.add_argument("--img-size", type=int, default=28)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    args = parse_timing_args(p, rounds=6, calls=20)
    model = vssm.create_model(args.model, in_chans=args.in_chans, num_classes=10)
    x = torch.randn(args.batch, args.in_chans, args.img_size, args.img_size)
    target = torch.randint(0, 10, (args.batch,))

    layers = []
    hooks = [m.register_forward_hook(lambda m, inp, out: layers.append((m, inp[0].detach())))
             for m in model.modules() if isinstance(m, DepthwiseConv2d)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()

    train_step = training_step(model, x, target)

    def conv_step(layer, inp):
        out = layer(inp)
        out.backward(torch.ones_like(out))

    def describe(layer, inp):
        last = inp.is_contiguous(memory_format=torch.channels_last) and not inp.is_contiguous()
        return (f"DepthwiseConv2d({layer.in_channels}, k={layer.kernel_size[0]}, stride={layer.stride[0]}) on "
                f"{tuple(inp.shape)}{' channels-last' if last else ''}")

    cases = [(describe(m, inp), (lambda m=m, inp=inp.requires_grad_(True): conv_step(m, inp)), EXPLICIT(m, inp))
             for m, inp in layers]
    cases.append((f"{args.model} training step (batch {args.batch}, {args.img_size} px, AdamW)", train_step, None))
    times = {name: {True: [], False: []} for name, _, _ in cases}
    for _ in range(args.rounds):
        for on in (False, True):
            use_explicit_padding(on)
            for name, fn, _ in cases:
                times[name][on].append(seconds_per_call(fn, args.calls) * 1e3)
    use_explicit_padding(True)

    print_setup(args)
    print("| what | explicit padding taken | plain padded conv (ms) | DepthwiseConv2d (ms) | ratio |")
    print("|---|---|---|---|---|")
    rows = []
    for name, _, explicit in cases:
        plain, ours = statistics.median(times[name][False]), statistics.median(times[name][True])
        taken = "-" if explicit is None else ("yes" if explicit else "no")
        print(f"| {name} | {taken} | {plain:.2f} | {ours:.2f} | {plain / ours:.2f}x |")
        rows.append(dict(what=name, explicit=explicit, plain_ms=plain, ours_ms=ours, rounds=times[name]))
    write_rows(args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
