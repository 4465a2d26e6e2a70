import json
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # the Triton kernels run on CPU tensors in the interpreter; read when triton.jit decorates, so set it before
    # vssm is imported. CPU code paths never pick Triton on their own ("auto" needs CUDA tensors).
    os.environ.setdefault("TRITON_INTERPRET", "1")

FIXTURES = Path(os.environ.get("VSSM_FIXTURES", Path(__file__).parent / "fixtures"))


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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
