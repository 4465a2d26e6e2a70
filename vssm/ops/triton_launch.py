"""Launch Triton kernels with less host time than ``kernel[grid](...)``.

``JITFunction.run`` binds and specialises every argument on every call (the scan kernels take ~70), builds a cache
key from them and then launches the compiled kernel. :func:`launch` keeps the compiled kernel under a cheaper key of
its own, which determines everything Triton specialises on (each tensor's dtype and 16-byte alignment, every other
argument's value, the constexpr and option values), and calls the kernel's launcher directly.
The first call of every key, and every call while Triton launch or pre-run hooks are set (profilers such as
proton) or under the interpreter, goes through Triton's own path; so does everything after a launcher that refuses
the call (a Triton whose launcher takes other arguments than 3.6-3.8's).
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
import triton
from torch import Tensor
from triton.runtime.jit import JITFunction

__all__ = ["launch", "ENABLED"]

ENABLED = True  # benchmarks/eager_ab_gpu.py variant triton_run turns it off
MAX_ENTRIES = 4096  # the cache is cleared beyond this many keys (every distinct shape adds some)
_KERNELS: Dict[tuple, Tuple[Any, Tuple[str, ...]]] = {}
_current_stream = None
_supported = True


def launch_key(fn: JITFunction, args: Sequence[Any], kwargs: Dict[str, Any]) -> tuple:
    """The cache key of one launch: equal keys launch the same compiled kernel. Tensors count by dtype and 16-byte
    alignment, everything else by value (finer than Triton's own specialisation, which is harmless: a new key
    goes through Triton's path once)."""
    return (fn, tuple((a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, Tensor) else a for a in args),
            tuple(kwargs.items()))


def _hooks_idle() -> bool:
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is None:  # a Triton without knobs: keep its own launch path
        return False
    hooks = (runtime.launch_enter_hook, runtime.launch_exit_hook)
    return all(h is None or getattr(h, "calls", None) == [] for h in hooks)


def launch(fn: JITFunction, grid: Tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """``fn[grid](*args, **kwargs)``, with the compiled kernel looked up in vssm's own cache. ``args`` are the
    kernel's leading parameters in order; ``kwargs`` the remaining parameters by name and launch options
    (num_warps, num_stages)."""
    global _current_stream, _supported
    if not (ENABLED and _supported and isinstance(fn, JITFunction) and args[0].is_cuda
            and not getattr(fn, "pre_run_hooks", None) and _hooks_idle()):
        fn[grid](*args, **kwargs)
        return
    device = torch.cuda.current_device()
    key = device, launch_key(fn, args, kwargs)
    entry = _KERNELS.get(key)
    if entry is None:
        kernel = fn[grid](*args, **kwargs)  # compiles or finds the kernel, and launches it
        if kernel is not None and kernel.run is not None and kernel.function is not None:
            if len(_KERNELS) >= MAX_ENTRIES:
                _KERNELS.clear()
            _KERNELS[key] = kernel, tuple(p.name for p in fn.params[len(args):])
        return
    kernel, rest = entry
    if _current_stream is None:
        from triton.runtime import driver

        _current_stream = driver.active.get_current_stream
    grid = tuple(grid) + (1,) * (3 - len(grid))
    # the launcher takes every parameter in signature order (it skips the constexprs), as JITFunction.run passes them
    try:
        kernel.run(grid[0], grid[1], grid[2], _current_stream(device), kernel.function, kernel.packed_metadata, None,
                   None, None, *args, *(kwargs[name] for name in rest))
    except TypeError:  # its arguments are parsed before anything is launched
        _supported = False
        fn[grid](*args, **kwargs)
