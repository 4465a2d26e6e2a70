"""vssm's Triton launch cache (vssm/ops/triton_launch.py): its key must separate every launch that Triton would
compile differently. The launches themselves run on the GPU (`gpu` test); the key is checked here on CPU tensors."""
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from triton.runtime.jit import JITFunction  # noqa: E402

from conftest import requires_cuda  # noqa: E402
from vssm.ops.triton_launch import launch_key  # noqa: E402


def _kernel(x_ptr, n, C: tl.constexpr, stride, BLOCK: tl.constexpr):  # only its signature is used
    pass


KERNEL = JITFunction(_kernel)


def key(*args, **kwargs):
    return launch_key(KERNEL, args, kwargs)


def test_key_separates_what_triton_specialises_on():
    x = torch.zeros(64)
    base = key(x, 100, 96, 32, BLOCK=64, num_warps=4)
    assert key(torch.ones(64), 100, 96, 32, BLOCK=64, num_warps=4) == base  # another tensor, same dtype / alignment
    assert key(x[4:], 100, 96, 32, BLOCK=64, num_warps=4) == base  # 4 floats in: 16-byte aligned again
    assert key(x.double(), 100, 96, 32, BLOCK=64, num_warps=4) != base  # dtype
    assert key(x[1:], 100, 96, 32, BLOCK=64, num_warps=4) != base  # 16-byte alignment of the pointer
    assert key(x, 1, 96, 32, BLOCK=64, num_warps=4) != base  # an int equal to 1
    assert key(x, 100, 96, 33, BLOCK=64, num_warps=4) != base  # divisibility by 16
    assert key(x, 1 << 40, 96, 32, BLOCK=64, num_warps=4) != base  # 64-bit ints
    assert key(x, 100, 192, 32, BLOCK=64, num_warps=4) != base  # a positional constexpr
    assert key(x, 100, 96, 32, BLOCK=32, num_warps=4) != base  # constexpr keyword
    assert key(x, 100, 96, 32, BLOCK=64, num_warps=8) != base  # launch option


@requires_cuda
@pytest.mark.gpu
def test_cached_launches_match_tritons_path(monkeypatch):
    """The cached path (second call on) gives what Triton's own launch gives, also when an argument's pointer
    alignment changes between calls (a new key: compiled again, not the aligned kernel)."""
    from vssm.ops import layer_norm, triton_launch

    storage = torch.randn(1 + 64 * 96, device="cuda")
    w, b = torch.randn(96, device="cuda"), torch.randn(96, device="cuda")
    for offset in (0, 0, 1, 1, 0):
        x = storage[offset:offset + 64 * 96].view(64, 96)
        ref = torch.nn.functional.layer_norm(x, (96,), w, b, 1e-5)
        torch.testing.assert_close(layer_norm._ln_forward(x, w, b, 1e-5, torch.float32)[0], ref)
    monkeypatch.setattr(triton_launch, "ENABLED", False)
    torch.testing.assert_close(layer_norm._ln_forward(x, w, b, 1e-5, torch.float32)[0], ref)
