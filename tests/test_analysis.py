"""Analysis tools (issue 6): FLOPs / params against the official numbers, the scan as an attention matrix, the ERF
of a model with a known receptive field, and the PNGs every command writes."""
import functools
import json
import struct

import pytest
import torch
import torch.nn as nn

import vssm  # noqa: F401  (registers the models)
from vssm.analysis.attnmap import ScanCall, capture_scans, direction_maps, pixel_matrix, rollout, scan_matrix
from vssm.analysis.erf import area_ratios, effective_receptive_field, normalize_erf
from vssm.analysis.flops import OFFICIAL, count_flops, model_flops
from vssm.cli import main as cli
from vssm.layers.ss2d import SS2D
from vssm.ops import cross_merge, scan_index_maps, selective_scan, selective_scan_macs
from vssm.ops.flops import ScanSize

from conftest import load_keys

RELEASES = sorted(OFFICIAL)
TINY = json.dumps({"dims": 16, "depths": [1, 1, 2, 1]})


@functools.lru_cache(maxsize=None)
def flops_of(name):
    return model_flops(name)


def assert_png(path, min_size=32):
    """A real PNG: signature, IHDR chunk with a plausible size, and IEND at the end."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= min_size and height >= min_size, (width, height)
    assert data[-8:-4] == b"IEND"
    assert len(data) > 1000


# --- FLOPs and parameters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RELEASES)
def test_official_gflops_and_params(name):
    result = flops_of(name)
    keys = load_keys(name)
    reported = keys["reported"]
    assert result.params == keys["num_params"] == reported["params"] == OFFICIAL[name][0]
    assert result.input_size == (3, 224, 224)
    assert abs(result.gflops / reported["gflops"] - 1) < 0.01
    if not name.startswith("vanilla"):
        # v2 / v2v: equal to the multiply-add (all their matmuls are convs, which fvcore counts exactly)
        assert result.macs == round(reported["gflops"] * 1e9)
    else:
        # v0: fvcore parsed numpy's einsum_path report, which prints the FLOP count with 4 significant digits
        assert abs(result.gflops / reported["gflops"] - 1) < 1e-4


def test_flop_breakdown_and_convention():
    result = flops_of("vmamba_tiny_s1l8")
    by_op = result.macs_by_op
    # spec/vmamba.md §6.1: conv (incl. the channel-first 1x1 convs and the projections) 4.812, SS 0.063, LN 0.030
    assert round((by_op["conv"] + by_op["linear/matmul"] - 768_000) / 1e9, 3) == 4.812
    assert round(by_op["selective_scan"] / 1e9, 3) == 0.063
    assert round(by_op["layer_norm"] / 1e9, 3) == 0.030
    assert result.torch_flops == 2 * result.macs  # FlopCounterMode's unit


def test_scan_formula_registered_with_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    b, k, d, n, length = 2, 4, 8, 16, 20
    u = torch.randn(b, k * d, length)
    args = (u, torch.rand_like(u), -torch.rand(k * d, n), torch.randn(b, k, n, length), torch.randn(b, k, n, length))
    with FlopCounterMode(display=False) as counter:
        selective_scan(*args, D=torch.randn(k * d))
    expected = 9 * b * length * k * d * n + b * length * k * d
    assert counter.get_total_flops() == 2 * expected == 2 * selective_scan_macs(ScanSize(b, k * d, length, n))


def test_fused_ss2d_op_counts_like_the_unfused_path(monkeypatch):
    from vssm.ops.triton_ops import HAS_TRITON

    if not HAS_TRITON:
        pytest.skip("triton is not installed: the fused SS2D path cannot be selected")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # makes the fused path eligible on CPU (fake tensors: no kernel runs)
    model = vssm.create_model("vmamba_tiny_s1l8", dims=16, depths=[1, 1, 2, 1]).eval()
    plain = count_flops(model, (3, 64, 48))
    for module in model.modules():
        if hasattr(module, "scan_backend"):
            module.scan_backend = "triton"
    fused = count_flops(model, (3, 64, 48))
    assert any("cross_selective_scan" in op for op in fused.macs_by_op) or "selective_scan (fused, incl. dt proj)" in fused.macs_by_op
    assert fused.macs == plain.macs


def test_timm_peer_and_other_size():
    swin = model_flops("swin_tiny_patch4_window7_224")
    assert swin.params == 28_288_354 and abs(swin.gflops - 4.5) < 0.05  # Swin-T's 4.5G
    deit = model_flops("deit_small_patch16_224")
    assert abs(deit.gflops - 4.6) < 0.05 and deit.macs_by_op.get("attention", 0) + deit.macs_by_op["linear/matmul"] > 4.5e9
    small = model_flops("vmamba_tiny_s1l8", (160, 96), dims=16, depths=[1, 1, 1, 1])
    assert small.input_size == (3, 160, 96) and small.macs > 0


def test_flops_cli_json_and_png(capsys, tmp_path):
    out = tmp_path / "flops.png"
    args = ["flops", "--model", "vmamba_tiny_s1l8", "--model-kwargs", TINY, "--size", "96", "64", "--json", "--out", str(out)]
    assert cli(args) == 0
    assert_png(out)
    out = json.loads(capsys.readouterr().out)
    expected = model_flops("vmamba_tiny_s1l8", (96, 64), **json.loads(TINY))
    assert out == {"model": "vmamba_tiny_s1l8", "params": expected.params, "gflops": round(expected.gflops, 6),
                   "input": [3, 96, 64]}


# --- the selective scan as an attention matrix --------------------------------------------------------------------


@pytest.mark.parametrize("d_state,forward_type,channel_first", [(1, "v05_noz", True), (16, "v0", False)])
def test_attention_matrix_reproduces_scan(d_state, forward_type, channel_first):
    torch.manual_seed(0)
    layer = SS2D(d_model=8, d_state=d_state, ssm_ratio=2.0, forward_type=forward_type, channel_first=channel_first)
    with torch.no_grad():  # move away from the init values (A = -n, small dt) so every term matters
        layer.A_logs.add_(0.5 * torch.randn_like(layer.A_logs))
        layer.dt_projs_bias.add_(torch.randn_like(layer.dt_projs_bias))
    height, width = 5, 7  # non-square
    x = torch.randn(2, 8, height, width) if channel_first else torch.randn(2, height, width, 8)
    with torch.no_grad(), capture_scans([layer]) as records:
        layer(x)
    (call,) = records[layer]
    assert (call.height, call.width, call.length) == (height, width, height * width)
    e = call.u.shape[1] // 4
    merged = 0
    for k in range(4):
        for batch in range(2):
            result = scan_matrix(call, k, batch=batch)
            assert result.max_abs_error <= 1e-6 * result.max_abs_y  # fp32 rounding of the scan's own output
        # scan order -> pixel order with the inverse index map (what pixel_matrix and direction_maps use)
        inv = torch.argsort(scan_index_maps("cross2d", height, width)[k])
        assert pixel_matrix(call, k)[2] < 1e-6
        merged = merged + call.y[0, k * e : (k + 1) * e][:, inv]
    # the four directions summed at each pixel = the SS2D merge of the captured outputs
    ys = call.y[:1].view(1, 4, e, height * width)
    torch.testing.assert_close(merged.view(e, height, width), cross_merge(ys, height, width)[0])


def test_activation_map_is_the_pixel_order_row():
    torch.manual_seed(1)
    b, k, d, n, h, w = 1, 4, 3, 2, 4, 6
    length = h * w
    u = torch.randn(b, k * d, length)
    call = ScanCall(u, 0.5 * torch.randn_like(u), -torch.rand(k * d, n) - 0.1, torch.randn(b, k, n, length),
                    torch.randn(b, k, n, length), torch.randn(k * d), torch.randn(k * d), True, None, h, w)
    call.y = selective_scan(call.u, call.delta, call.A, call.B, call.C, call.D, call.delta_bias, backend="reference")
    maps, errors = direction_maps(call, (1, 4))
    assert max(errors) < 1e-6
    for direction in range(k):
        _, pixel, _ = pixel_matrix(call, direction)
        torch.testing.assert_close(torch.from_numpy(maps[direction]), torch.from_numpy(pixel[1 * w + 4]).view(h, w))
        # causality in scan order: the query row is zero for every source after the query in that order
        order = scan_index_maps("cross2d", h, w)[direction].tolist()
        later = order[order.index(1 * w + 4) + 1 :]
        assert all(maps[direction].reshape(-1)[p] == 0 for p in later)


def test_rollout_rows_are_normalised_by_their_own_sum():
    a = torch.tensor([[1.0, 3.0], [0.0, 2.0]]).numpy()
    # correct: row 0 -> [0.25, 0.75], row 1 -> [0, 1]; P = (A + I) / 2
    vec = rollout([a], 0)
    assert vec.tolist() == pytest.approx([0.625, 0.375])
    assert rollout([a, a], 0).sum() == pytest.approx(1.0)


# --- effective receptive field -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 3])
def test_erf_of_a_conv_stack_is_its_window(layers):
    convs = []
    for _ in range(layers):
        conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        nn.init.constant_(conv.weight, 1.0 / 18)  # positive: every path through the window contributes
        convs.append(conv)
    model = nn.Sequential(*convs)
    size = 15
    images = [torch.rand(1, 2, size, size) + 0.1 for _ in range(3)]
    result = effective_receptive_field(model, images)
    assert result.images_used == 3
    nonzero = torch.from_numpy(result.grad_map) > 0
    expected = torch.zeros(size, size, dtype=torch.bool)
    c = size // 2
    expected[c - layers : c + layers + 1, c - layers : c + layers + 1] = True
    assert torch.equal(nonzero, expected)
    data = normalize_erf(result.grad_map, "power")
    assert data.max() == 1.0 and data.min() == 0.0
    side, _ = area_ratios(data, (0.99,))[0.99]
    assert side == 2 * layers + 1
    assert normalize_erf(result.grad_map, "log").max() == 1.0


def test_erf_skips_images_with_nan_gradients():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)

    def feature_fn(x):  # d/dx sqrt|x| is infinite at 0: an all-zero image gives NaN gradients
        return conv(x) * x.abs().sqrt()

    images = [torch.rand(1, 1, 9, 9) + 0.1, torch.zeros(1, 1, 9, 9), torch.rand(1, 1, 9, 9) + 0.1]
    result = effective_receptive_field(feature_fn, images)
    assert (result.images_used, result.images_skipped) == (2, 1)
    assert (result.grad_map >= 0).all()


# --- every command writes a PNG ----------------------------------------------------------------------------------


def test_erf_cli_png(tmp_path):
    out = tmp_path / "erf.png"
    args = ["erf", "--model", "vmamba_tiny_s1l8", "vmamba_tiny_s2l5", "--model-kwargs", TINY, "--images", "1",
            "--size", "64", "--out", str(out), "--save-npy"]
    assert cli(args) == 0
    assert_png(out)
    assert (tmp_path / "erf_vmamba_tiny_s1l8.npy").exists()


def test_attnmap_cli_png(tmp_path):
    out = tmp_path / "attn"
    args = ["attnmap", "--model", "vmamba_tiny_s1l8", "--model-kwargs", TINY, "--image", "fashion-mnist", "--size",
            "64", "48", "--stage", "1", "--block", "0", "--query", "0.25", "0.5", "--out", str(out), "--rollout"]
    assert cli(args) == 0
    assert_png(out / "activation.png")
    assert_png(out / "matrix_k0.png")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["feature_map"] == [8, 6] and summary["query"] == [2, 3]
    assert max(summary["relative_error_per_direction"]) < 1e-6
    assert summary["normalisation"]["mean"] == pytest.approx([0.485, 0.456, 0.406])  # ImageNet, not 0.5 / 0.25


def test_attnmap_cli_swin_png(tmp_path):
    out = tmp_path / "swin"
    kwargs = json.dumps({"embed_dim": 16, "depths": [1, 2, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 4})
    args = ["attnmap", "--model", "swin_tiny_patch4_window7_224", "--model-kwargs", kwargs, "--size", "64",
            "--stage", "1", "--block", "1", "--out", str(out)]
    assert cli(args) == 0
    assert_png(out / "activation.png")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "swin" and summary["relative_error"] < 1e-5


def test_scale_cli_png(tmp_path, capsys):
    out = tmp_path / "scale.png"
    args = ["scale", "--model", "vmamba_tiny_s1l8", "--model-kwargs", TINY, "--sizes", "64", "96", "--no-throughput",
            "--out", str(out)]
    assert cli(args) == 0
    assert_png(out)
    rows = json.loads((tmp_path / "scale.json").read_text())
    assert [r["size"] for r in rows] == [64, 96] and rows[1]["gflops"] > rows[0]["gflops"]
