"""Compile the scan kernels for sm_90 here (no GPU) and report layouts / SASS counts.
usage: python .notes/sass.py fwd|bwd BLOCK_L BLOCK_D NUM_WARPS [dtype] [N]"""
import sys, re, os, subprocess, collections
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from vssm.ops import triton_scan as ks

which, BL, BD, NW = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dt = sys.argv[5] if len(sys.argv) > 5 else "fp32"
N = int(sys.argv[6]) if len(sys.argv) > 6 else 1
fn = ks._scan_fwd_kernel if which == "fwd" else ks._scan_bwd_kernel
names = fn.arg_names
sig, const = {}, {}
ptr_dtypes = {"u_ptr": dt, "dl_ptr": dt, "z_ptr": dt, "b_ptr": dt, "c_ptr": dt, "y_ptr": dt, "dy_ptr": dt}
flags = dict(K=4, N=N, ORDER=0, FLAT=True, MERGE=False, SOFTPLUS=True, HAS_D=True, HAS_BIAS=True, FAST_MATH=True,
             BLOCK_L=BL, BLOCK_D=BD, BLOCK_N=triton.next_power_of_2(N), NUM_STAGES=2 if which == "fwd" else 1, EVEN_D=True,
             DT_PROJ=False, R=0, LOAD_STATE=False, SUMMARY=False, STORE_Y=True)
if len(sys.argv) > 7:
    for kv in sys.argv[7].split(","):
        k, v = kv.split("="); flags[k] = eval(v)
CROSS = os.environ.get("GEOM") == "cross"
if CROSS:
    flags.update(ORDER=1, FLAT=False, MERGE=True)
specialized_one = {"su_d", "sdl_c", "sz_d", "sb_n", "sc_n", "sy_d", "sdu_d", "sdz_d", "sdb_n", "sdc_n"} if CROSS else {"su_w", "sdl_w", "sz_w", "sb_w", "sc_w", "sy_w", "sdu_w", "sdz_w", "sdb_w", "sdc_w"}
zero = set() if CROSS else {"su_h", "sdl_h", "sz_h", "sb_h", "sc_h", "sy_h", "sdu_h", "sdz_h", "sdb_h", "sdc_h", "sb_n", "sc_n", "sdb_n", "sdc_n"}
attrs = {}
for i, n in enumerate(names):
    if n in flags:
        sig[n] = "constexpr"; const[(i,)] = flags[n]
    elif n.endswith("_ptr"):
        sig[n] = "*" + ptr_dtypes.get(n, "fp32"); attrs[(i,)] = [["tt.divisibility", 16]]
    elif n in specialized_one:
        sig[n] = "constexpr"; const[(i,)] = 1
    else:
        sig[n] = "i32"
        if n not in ("E", "H", "W", "L", "NCHUNK", "CPP", "NPROG"):
            attrs[(i,)] = [["tt.divisibility", 16]]
src = ASTSource(fn, sig, const, attrs)
k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=NW, num_stages=1))
out = os.environ.get("SASS_OUT", "/tmp/sass")
os.makedirs(out, exist_ok=True)
open(f"{out}/k.ttgir", "w").write(k.asm["ttgir"])
open(f"{out}/k.ptx", "w").write(k.asm["ptx"])
open(f"{out}/k.cubin", "wb").write(k.asm["cubin"])
bin = os.path.dirname(triton.__file__) + "/backends/nvidia/bin/"
sass = subprocess.run([bin + "nvdisasm", "-c", f"{out}/k.cubin"], capture_output=True, text=True).stdout
open(f"{out}/k.sass", "w").write(sass)
ops = collections.Counter(m.group(1).split(".")[0] for m in re.finditer(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass, re.M))
regs = re.findall(r"\.maxnreg|REG", "");print("shared", k.metadata.shared, "instrs", sum(ops.values()))
print(" ".join(f"{a}:{b}" for a, b in ops.most_common(40)))
