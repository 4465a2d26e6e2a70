import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

if not torch.cuda.is_available():
    # the Triton kernels run on CPU tensors in the interpreter; read when triton.jit decorates, so set it before
    # vssm is imported. CPU code paths never pick Triton on their own ("auto" needs CUDA tensors).
    os.environ.setdefault("TRITON_INTERPRET", "1")

FIXTURES = Path(os.environ.get("VSSM_FIXTURES", Path(__file__).parent / "fixtures"))
ROOT = Path(__file__).resolve().parents[1]


def load_fixture(name: str):
    """(meta json, dict of tensors) of a golden fixture produced by the official code (tests/fixtures/README.md)."""
    from safetensors.torch import load_file

    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    return meta, load_file(str(FIXTURES / f"{name}.safetensors"))


def load_keys(name: str) -> dict:
    return json.loads((FIXTURES / "keys" / f"{name}.json").read_text())


def split_fixture(tensors: dict):
    """(state_dict, outputs) of a fixture's tensors: keys starting with "__" are inputs / outputs."""
    state_dict = {k: v for k, v in tensors.items() if not k.startswith("__")}
    return state_dict, {k: v for k, v in tensors.items() if k.startswith("__")}


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device tool)")
needs_data = pytest.mark.skipif(
    not os.path.exists(os.path.join(os.environ.get("VSSM_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"),
                                    "t10k-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST not installed (make data)",
)


def run_vssm(*args: str, nproc: int = 1, fault: Optional[str] = None, timeout: int = 300,
             check: bool = False) -> subprocess.CompletedProcess:
    """`python -m vssm ARGS` in a child process (under torchrun with `nproc` > 1), one OpenMP thread each, the
    checkout on the path; `fault` sets VSSM_FAULT (vssm/train/faults.py); `check` fails the test, with the
    command's output, when it exits non-zero."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("VSSM_FAULT", None)
    if fault:
        env["VSSM_FAULT"] = fault
    launcher = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run([*launcher, "-m", "vssm", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"vssm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_cli(capsys, *argv: str):
    """The vssm command in this process, for paths that stop before any training: (exit code, stderr)."""
    from vssm.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
