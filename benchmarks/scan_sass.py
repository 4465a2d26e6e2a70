"""Compile a scan kernel for an H100 (sm_90) on this machine, no GPU needed, and count what the compiler made of it.

Prints the shared memory and the SASS instruction count with the most frequent opcodes; writes the Triton GPU IR
(register layouts, layout conversions), PTX, cubin and SASS under ``--out``. This is how the plain scan's layout
problems were found (benchmarks/results/gpu-2026-11-22.md, Update 7): compare variants' counts here, then time the
winners on a GPU.

    PYTHONPATH=. python benchmarks/scan_sass.py fwd --block-l 64 --block-d 8 --warps 4 --dtype bf16
    PYTHONPATH=. python benchmarks/scan_sass.py bwd --geometry cross --block-l 16 --block-d 32 --warps 1 --set EVEN_L=0

Geometry ``plain``: selective_scan's (B, K*D, L) layout (positions contiguous, FLAT); ``cross``: the SS2D op on
channels_last maps (channels contiguous, 4 directions merged). Strides equal to 1 are specialised as Triton does at
launch; the other integer arguments are assumed divisible by 16, the shape arguments are not specialised.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from vssm.ops import triton_scan

_UNIT_STRIDES = {
    "plain": {"su_w", "sdl_w", "sz_w", "sb_w", "sc_w", "sy_w", "sdu_w", "sdz_w", "sdb_w", "sdc_w"},
    "cross": {"su_d", "sdl_c", "sz_d", "sb_n", "sc_n", "sy_d", "sdu_d", "sdz_d", "sdb_n", "sdc_n"},
}
_SHAPE_ARGS = {"E", "H", "W", "L", "NCHUNK", "CPP", "NPROG"}
_OPCODE = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", re.M)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kernel", choices=("fwd", "bwd"))
    ap.add_argument("--geometry", choices=("plain", "cross"), default="plain")
    ap.add_argument("--block-l", type=int, default=64)
    ap.add_argument("--block-d", type=int, default=8)
    ap.add_argument("--warps", type=int, default=2)
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="of the maps / sequences")
    ap.add_argument("--n-state", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="FLAG=INT",
                    help="override a constexpr flag, e.g. EVEN_L=0 or NUM_STAGES=3 (repeatable)")
    ap.add_argument("--out", default="/tmp/scan_sass")
    args = ap.parse_args()

    cross = args.geometry == "cross"
    fn = triton_scan._scan_fwd_kernel if args.kernel == "fwd" else triton_scan._scan_bwd_kernel
    flags = dict(K=4, N=args.n_state, ORDER=1 if cross else 0, FLAT=not cross, MERGE=cross, SOFTPLUS=True, HAS_D=True,
                 HAS_BIAS=True, FAST_MATH=True, BLOCK_L=args.block_l, BLOCK_D=args.block_d,
                 BLOCK_N=triton.next_power_of_2(args.n_state), NUM_STAGES=2 if args.kernel == "fwd" else 1,
                 EVEN_D=True, EVEN_L=True, DT_PROJ=False, R=0, LOAD_STATE=False, SUMMARY=False, STORE_Y=True)
    for item in args.set:
        name, value = item.split("=")
        if name not in flags:
            raise SystemExit(f"--set {item}: {name} is not a flag of the kernel; flags: {sorted(flags)}")
        flags[name] = int(value)
    data_ptrs = {"u_ptr", "dl_ptr", "z_ptr", "b_ptr", "c_ptr", "y_ptr", "dy_ptr"}
    signature, constants, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in flags:
            signature[name], constants[(i,)] = "constexpr", flags[name]
        elif name.endswith("_ptr"):
            signature[name] = "*" + (args.dtype if name in data_ptrs else "fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in _UNIT_STRIDES[args.geometry]:
            signature[name], constants[(i,)] = "constexpr", 1
        else:
            signature[name] = "i32"
            if name not in _SHAPE_ARGS:
                attrs[(i,)] = [["tt.divisibility", 16]]
    kernel = triton.compile(ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=args.warps, num_stages=1))
    os.makedirs(args.out, exist_ok=True)
    for ext in ("ttgir", "ptx"):
        with open(os.path.join(args.out, f"kernel.{ext}"), "w") as f:
            f.write(kernel.asm[ext])
    cubin = os.path.join(args.out, "kernel.cubin")
    with open(cubin, "wb") as f:
        f.write(kernel.asm["cubin"])
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    sass = subprocess.run([nvdisasm, "-c", cubin], capture_output=True, text=True, check=True).stdout
    with open(os.path.join(args.out, "kernel.sass"), "w") as f:
        f.write(sass)
    opcodes = collections.Counter(m.group(1).split(".")[0] for m in _OPCODE.finditer(sass))
    print(f"shared memory {kernel.metadata.shared} B, {sum(opcodes.values())} SASS instructions, "
          f"{kernel.asm['ttgir'].count('convert_layout')} layout conversions in the IR")
    print(" ".join(f"{op}:{count}" for op, count in opcodes.most_common(30)))


if __name__ == "__main__":
    main()
