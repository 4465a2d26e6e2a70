"""CUDA graphs for eager training: a model's ``forward_features`` and its backward replayed as two captured graphs.

Why: on an H100 an eager VMamba training step is bound by the host (Python, autograd, and the set-up and launch of
every kernel), not by its GPU work, which is shorter than Swin-T's (benchmarks/results/gpu-2026-11-22.md, Update 8).
Replaying the trunk's forward and backward as CUDA graphs leaves the host two launches and a few copies per step,
without torch.compile's compilation.

:func:`enable_cuda_graphs` works on any model with ``forward_features`` (vssm's and timm's). The graphs serve training
calls only (CUDA input, ``model.training``, grad enabled); every other call runs the model's own code. They are
captured on the first training call of a new input shape / dtype / autocast state / set of parameter tensors (a few
warm-up passes, then the capture) and replayed afterwards; the output and the gradients are copies, never the
graphs' static buffers, so a caller may keep them.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Callable, Hashable, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call
from torch.nn.modules import module as module_hooks

__all__ = ["GraphedForward", "enable_cuda_graphs"]


class _Capture:
    """One shape's graphs and the static tensors they read and write."""

    def __init__(self, static_in: Tensor, params: List[nn.Parameter]):
        self.static_in = static_in
        self.params = params
        self.pool = torch.cuda.graph_pool_handle()
        self.fwd = torch.cuda.CUDAGraph()
        self.bwd = torch.cuda.CUDAGraph()
        self.static_out: Optional[Tensor] = None
        self.static_grad_out: Optional[Tensor] = None
        self.static_grads: Tuple[Optional[Tensor], ...] = ()
        self.generation = 0
        self.evicted = False


class _Token:
    """Lives as long as the autograd graph of one replay: while it does, that replay's saved tensors are in use."""


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, owner: "GraphedForward", cap: _Capture, x: Tensor, *params: Tensor) -> Tensor:
        if cap.static_in.data_ptr() != x.data_ptr():
            cap.static_in.copy_(x)
        cap.fwd.replay()
        cap.generation += 1
        ctx.owner, ctx.cap, ctx.generation = owner, cap, cap.generation
        ctx.x_needs_grad = x.requires_grad
        ctx.token = _Token()
        owner._pending = weakref.ref(ctx.token)
        return cap.static_out.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        cap = ctx.cap
        if cap.evicted or ctx.generation != cap.generation:
            raise RuntimeError(
                "backward through a CUDA-graphed forward_features after the graph was replayed again: its saved "
                "activations are gone. Run backward once per forward (no retain_graph reuse across steps), or "
                "disable the graphs with vssm.enable_cuda_graphs(model, False)"
            )
        ctx.owner._pending = None
        cap.static_grad_out.copy_(grad)
        cap.bwd.replay()
        grads = [g.clone() if g is not None else None for g in cap.static_grads]
        grad_x = grads.pop(0) if ctx.x_needs_grad else None
        return (None, None, grad_x, *grads)


_GLOBAL_HOOKS = (
    module_hooks._global_forward_hooks,
    module_hooks._global_forward_pre_hooks,
    module_hooks._global_backward_hooks,
    module_hooks._global_backward_pre_hooks,
)


def _has_hooks(model: nn.Module) -> bool:
    if any(_GLOBAL_HOOKS):
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in model.modules()
    )


class GraphedForward:
    """Stands in for ``model.forward_features``: replays CUDA graphs for training calls, the original otherwise.

    ``fn`` is the unbound original (``type(model).forward_features``), called as ``fn(model, x)``. At most
    ``max_graphs`` shapes are kept (least recently used evicted, its memory freed). ``captures`` and ``replays``
    count what happened, ``last_eager_reason`` says why the latest call ran eagerly.
    """

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor], max_graphs: int = 2,
                 warmup: int = 3):
        if max_graphs < 1 or warmup < 1:
            raise ValueError(f"max_graphs and warmup must be >= 1, got {max_graphs} and {warmup}")
        self.model = model
        self.fn = fn
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.graphs: "OrderedDict[Hashable, _Capture]" = OrderedDict()
        self.captures = 0
        self.replays = 0
        self.last_eager_reason: Optional[str] = None
        self._pending: Optional[weakref.ref] = None

    def __reduce__(self):
        # copies (ModelEmaV3's deepcopy) and pickles get fresh, empty graphs bound to the copied model
        return GraphedForward, (self.model, self.fn, self.max_graphs, self.warmup)

    def _eager_reason(self, x: Tensor) -> Optional[str]:
        model = self.model
        if not isinstance(x, Tensor) or not x.is_cuda:
            return "input not on a CUDA device"
        if not (model.training and torch.is_grad_enabled()):
            return "not a training call (eval mode or no grad)"
        if torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing():
            return "traced or compiled"
        if torch.cuda.is_current_stream_capturing():
            return "already inside a CUDA graph capture"
        if getattr(model, "grad_checkpointing", False):
            return "gradient checkpointing re-runs the forward"
        if torch.is_anomaly_enabled():
            return "anomaly detection"
        if _has_hooks(model):
            return "module hooks would not run on a replay"
        if self._pending is not None and self._pending() is not None:
            return "the previous replay's backward has not run yet"
        return None

    def _key(self, x: Tensor, params: List[Tensor], buffers: List[Tensor]) -> Hashable:
        amp = torch.is_autocast_enabled("cuda")
        return (
            tuple(x.shape), x.stride(), x.dtype, x.device, x.requires_grad,
            amp, torch.get_autocast_dtype("cuda") if amp else None,
            tuple((p.data_ptr(), p.dtype, p.requires_grad) for p in params),
            tuple(b.data_ptr() for b in buffers),
        )

    def __call__(self, x: Tensor) -> Tensor:
        reason = self._eager_reason(x)
        if reason is None:
            named = list(self.model.named_parameters())
            params = [p for _, p in named]
            if not (x.requires_grad or any(p.requires_grad for p in params)):
                reason = "nothing requires grad"
        if reason is None:
            buffers = list(self.model.buffers())
            key = self._key(x, params, buffers)
            cap = self.graphs.get(key)
            if cap is None:
                cap = self._capture(x, key, named, buffers)
        self.last_eager_reason = reason
        if reason is not None:
            return self.fn(self.model, x)
        self.graphs.move_to_end(key)
        self.replays += 1
        return _Replay.apply(self, cap, x, *cap.params)

    def _capture(self, x: Tensor, key: Hashable, named: List[Tuple[str, nn.Parameter]],
                 buffers: List[Tensor]) -> _Capture:
        while len(self.graphs) >= self.max_graphs:
            _, old = self.graphs.popitem(last=False)
            old.evicted = True
        trainable = [(n, p) for n, p in named if p.requires_grad]
        # the passes below differentiate w.r.t. fresh leaves that share the parameters' storage: the parameters'
        # own gradient accumulators may still belong to an earlier step's autograd graph, made on another stream,
        # and touching them from the capture stream would invalidate the capture
        leaves = {"model." + n: p.detach().requires_grad_() for n, p in trainable}
        trunk = _Trunk(self.model, self.fn)
        static_in = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        static_in.copy_(x)
        static_in.requires_grad_(x.requires_grad)
        inputs = ([static_in] if x.requires_grad else []) + list(leaves.values())
        cap = _Capture(static_in, [p for _, p in trainable])
        amp = torch.is_autocast_enabled("cuda")
        # autocast's weight-cast cache would hand the graph tensors that are freed when the caller's autocast exits
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=amp, cache_enabled=False)

        def forward() -> Tensor:
            with autocast:
                return functional_call(trunk, leaves, (static_in,), strict=False)

        # the warm-up and capture passes must not count as training steps of BatchNorm's running statistics
        saved_buffers = [b.clone() for b in buffers]
        try:
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):  # cuDNN's algorithm search and Triton's compilation happen here
                    out = forward()
                    torch.autograd.grad(out, inputs, torch.zeros_like(out), allow_unused=True)
                    del out
            torch.cuda.current_stream(x.device).wait_stream(side)
            with torch.cuda.graph(cap.fwd, pool=cap.pool):
                cap.static_out = forward()
            if not isinstance(cap.static_out, Tensor):
                raise TypeError(f"forward_features returned {type(cap.static_out).__name__}, not a tensor")
            cap.static_grad_out = torch.empty_like(cap.static_out)
            with torch.cuda.graph(cap.bwd, pool=cap.pool):
                cap.static_grads = torch.autograd.grad(cap.static_out, inputs, cap.static_grad_out, allow_unused=True)
            cap.static_out = cap.static_out.detach()
        except (RuntimeError, TypeError) as err:
            raise RuntimeError(
                f"{type(self.model).__name__}.forward_features could not be captured as a CUDA graph ({err}); "
                f"train without CUDA graphs (vssm.enable_cuda_graphs(model, False), or drop --cuda-graphs)"
            ) from err
        finally:
            with torch.no_grad():
                for b, saved in zip(buffers, saved_buffers):
                    b.copy_(saved)
        self.graphs[key] = cap
        self.captures += 1
        return cap


class _Trunk(nn.Module):
    """``fn(model, x)`` as a module's forward, so that torch.func.functional_call can substitute the parameters."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor]):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.model, x)


def enable_cuda_graphs(model: nn.Module, enable: bool = True, max_graphs: int = 2, warmup: int = 3) -> nn.Module:
    """Replay ``model.forward_features`` and its backward as CUDA graphs in training (see the module docstring).

    Works for vssm and timm models (anything whose ``forward`` calls ``self.forward_features``). Calls that are not
    training calls on CUDA, or that the graphs cannot serve exactly (module hooks, gradient checkpointing, a second
    forward before the first one's backward), run the model's own code. Not for DistributedDataParallel (its hooks
    are not captured) nor torch.compile (which has its own ``mode="reduce-overhead"``). ``enable=False`` removes
    the graphs. Returns ``model``.
    """
    if not callable(getattr(type(model), "forward_features", None)):
        raise TypeError(f"{type(model).__name__} has no forward_features: CUDA graphs wrap that method")
    if isinstance(model.__dict__.get("forward_features"), GraphedForward):
        del model.forward_features
    if enable:
        model.forward_features = GraphedForward(model, type(model).forward_features, max_graphs, warmup)
    return model
