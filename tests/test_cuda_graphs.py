"""vssm.enable_cuda_graphs: the graphed training path equals the model's own, and falls back where it cannot.

CPU tests cover the fallback, copies and the CLI's refusals; the graph tests are marked `gpu` (device tool)."""
import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from conftest import requires_cuda
import vssm
from vssm.cuda_graphs import GraphedForward, enable_cuda_graphs


VIM = "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"


def _tiny(**kwargs):
    kwargs.setdefault("drop_path_rate", 0.0)
    return vssm.create_model("vmamba_femto", num_classes=10, **kwargs)


def test_cpu_calls_run_the_model_itself():
    torch.manual_seed(0)
    model = _tiny().train()
    ref = copy.deepcopy(model)
    enable_cuda_graphs(model)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    graphs = model.forward_features
    assert isinstance(graphs, GraphedForward)
    assert graphs.captures == 0 and graphs.replays == 0
    assert graphs.last_eager_reason == "input not on a CUDA device"
    assert list(model.state_dict()) == list(ref.state_dict())
    enable_cuda_graphs(model, False)
    assert "forward_features" not in model.__dict__


def test_copies_and_pickles_get_their_own_empty_graphs():
    model = enable_cuda_graphs(_tiny())
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(clone.forward_features, GraphedForward)
        assert clone.forward_features.model is clone
        assert clone.forward_features is not model.forward_features
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded.forward_features.model is loaded


def test_create_model_kwarg_and_bad_arguments():
    assert isinstance(vssm.create_model("vmamba_femto", cuda_graphs=True).forward_features, GraphedForward)
    assert "forward_features" not in vssm.create_model("vmamba_femto").__dict__
    with pytest.raises(TypeError, match="forward_features"):
        enable_cuda_graphs(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="max_graphs"):
        enable_cuda_graphs(_tiny(), max_graphs=0)


def _step(model, x, target, amp=None):
    with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
        loss = F.cross_entropy(model(x).float(), target)
    loss.backward()
    return loss.detach()


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(got, ref, tol=1e-4):
    """Per parameter, relative to the gradient's norm: vssm's fused scan sums with fp32 atomic adds, so two eager
    copies of vmamba_tiny_s1l8 differ by up to 3e-6 in fp32 already; bitwise equality is not the bar."""
    assert got.keys() == ref.keys()
    for n in ref:
        err = ((got[n] - ref[n]).norm() / ref[n].norm().clamp_min(1e-30)).item()
        assert err < tol, f"{n}: relative error {err:.2e}"


@pytest.fixture(autouse=True)
def _full_fp32_convolutions():
    # cuDNN's TF32 convolutions pick algorithms per call site and round differently (1e-4 between two eager copies)
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["vmamba_femto", "vim", "msvmamba_micro", "resnet18"])
def test_graphed_steps_equal_eager_steps_with_accumulated_grads(name):
    """Three fp32 steps without zeroing the grads (as gradient accumulation does): every gradient and loss equal."""
    torch.manual_seed(0)
    if name == "vim":
        model = vssm.create_model(VIM, depth=2, num_classes=10, drop_path_rate=0.0, img_size=32)
    elif name == "msvmamba_micro":
        model = vssm.create_model(name, num_classes=10, drop_path_rate=0.0)
    elif name == "resnet18":  # BatchNorm: running statistics must not see the warm-up and capture passes
        model = vssm.create_model("resnet18", num_classes=10)
    else:
        model = _tiny()
    model = model.cuda().train()
    graphed = enable_cuda_graphs(copy.deepcopy(model))
    target = torch.randint(0, 10, (4,), device="cuda")
    for _ in range(3):
        x = torch.randn(4, 3, 32, 32, device="cuda")
        torch.testing.assert_close(_step(graphed, x, target), _step(model, x, target), rtol=1e-5, atol=1e-6)
    assert graphed.forward_features.captures == 1 and graphed.forward_features.replays == 3
    _assert_grads_close(_grads(graphed), _grads(model))
    for (n, b), b_ref in zip(graphed.named_buffers(), model.buffers()):
        torch.testing.assert_close(b, b_ref, rtol=1e-5, atol=1e-6, msg=n)


@requires_cuda
@pytest.mark.gpu
def test_fp16_autocast_and_drop_path_randomness():
    torch.manual_seed(0)
    model = enable_cuda_graphs(_tiny(drop_path_rate=0.3).cuda().train())
    x = torch.randn(4, 3, 32, 32, device="cuda")
    target = torch.randint(0, 10, (4,), device="cuda")
    losses = {_step(model, x, target, torch.float16).item() for _ in range(4)}
    assert model.forward_features.replays == 4
    assert len(losses) > 1, "every replay drew the same drop-path mask"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@requires_cuda
@pytest.mark.gpu
def test_fallbacks_keep_results_exact():
    torch.manual_seed(0)
    model = _tiny().cuda().train()
    graphed = enable_cuda_graphs(copy.deepcopy(model), max_graphs=1)
    fg = graphed.forward_features
    target = torch.randint(0, 10, (4,), device="cuda")
    x1, x2 = torch.randn(2, 4, 3, 32, 32, device="cuda")
    # two forwards before one backward: the second must not overwrite the first one's saved activations
    for m in (model, graphed):
        loss = F.cross_entropy(m(x1), target) + F.cross_entropy(m(x2), target)
        loss.backward()
    assert fg.replays == 1 and fg.last_eager_reason == "the previous replay's backward has not run yet"
    _assert_grads_close(_grads(graphed), _grads(model))
    # the output handed out is a copy: the next replay does not change it
    out = graphed(x1)
    F.cross_entropy(out, target).backward()
    kept = out.detach().clone()
    _step(graphed, x2, target)
    torch.testing.assert_close(out.detach(), kept, rtol=0, atol=0)
    # a hook must run on every call: the graphed path steps aside
    calls = []
    handle = graphed.layers[0].blocks[0].register_forward_hook(lambda *a: calls.append(1))
    _step(graphed, x1, target)
    handle.remove()
    assert calls == [1] and fg.last_eager_reason.startswith("module hooks")
    # eval / no_grad calls are the model's own
    with torch.no_grad():
        graphed.eval()
        model.eval()
        torch.testing.assert_close(graphed(x1), model(x1))
    graphed.train()
    # a new shape is captured, the old one evicted (max_graphs=1); a stale graph refuses a second backward
    out = graphed(x1)
    loss = F.cross_entropy(out, target)
    loss.backward(retain_graph=True)
    captures = fg.captures
    _step(graphed, torch.randn(2, 3, 32, 32, device="cuda"), target[:2])
    assert fg.captures == captures + 1 and len(fg.graphs) == 1
    with pytest.raises(RuntimeError, match="replayed again"):
        loss.backward()


def test_benchmark_refuses_cuda_graphs_without_a_gpu():
    import argparse

    from vssm import benchmark

    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    with pytest.raises(SystemExit, match="needs --device cuda"):
        benchmark.main(parser.parse_args(["--models", "vmamba_femto", "--device", "cpu", "--cuda-graphs"]))


@requires_cuda
@pytest.mark.gpu
def test_benchmark_rows_with_cuda_graphs():
    from vssm import benchmark

    rows = benchmark.run(["vmamba_tiny_s1l8"], ["train_fp16"], batch=4, size=64, warmup=3, iters=2, cuda_graphs=True)
    assert rows[0]["cuda_graphs"] and rows[0]["train_fp16_img_s"] > 0 and rows[0]["train_fp16_peak_mb"] > 0
    assert "vmamba_tiny_s1l8 (CUDA graphs)" in benchmark.markdown(rows, ["fp32", "train_fp16"])
