"""vssm.load_checkpoint: official file layouts, legacy names, strictness with useful errors, safety."""
import argparse
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import vssm
from conftest import load_fixture, split_fixture
from vssm.checkpoint import CheckpointError, extract_state_dict


def fixture_model(name="vmamba_v2v_s1_reduced"):
    meta, tensors = load_fixture(name)
    state_dict, outputs = split_fixture(tensors)
    return meta, state_dict, outputs


def fresh(meta, **kw):
    return vssm.build_official("vmamba", **dict(meta["constructor_args"], **kw)).eval()


def logits_of(model, outputs):
    with torch.no_grad():
        return model(outputs["__input__"])


@pytest.mark.parametrize("layout", ["bare", "model", "model_ema", "state_dict_module", "safetensors"])
def test_official_layouts_load_strictly(tmp_path, layout):
    meta, sd, outputs = fixture_model()
    path = tmp_path / "ckpt.pth"
    if layout == "bare":
        torch.save(sd, path)
    elif layout == "model":
        torch.save({"model": sd}, path)
    elif layout == "model_ema":  # a training checkpoint: several entries, plain metadata
        torch.save({"model_ema": sd, "optimizer": {"lr": 1.0}, "epoch": 3, "max_accuray_ema": 81.0}, path)
    elif layout == "state_dict_module":
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "meta": {"x": 1}}, path)
    else:
        path = tmp_path / "weights.safetensors"
        save_file(sd, str(path))
    model = fresh(meta)
    vssm.load_checkpoint(model, str(path))
    torch.testing.assert_close(logits_of(model, outputs), outputs["__logits__"], rtol=0, atol=meta["tolerance"]["atol"])


def test_explicit_key_choice(tmp_path):
    meta, sd, outputs = fixture_model()
    noisy = {k: v + 1.0 for k, v in sd.items()}
    path = tmp_path / "both.pth"
    torch.save({"model": noisy, "model_ema": sd}, path)
    model = fresh(meta)
    vssm.load_checkpoint(model, str(path), key="model_ema")
    torch.testing.assert_close(logits_of(model, outputs), outputs["__logits__"], rtol=0, atol=meta["tolerance"]["atol"])
    vssm.load_checkpoint(model, str(path))  # auto takes 'model'
    assert torch.equal(model.layers[0].blocks[0].op.Ds, noisy["layers.0.blocks.0.op.Ds"])
    with pytest.raises(CheckpointError, match="no entry 'ema'"):
        vssm.load_checkpoint(model, str(path), key="ema")


def test_legacy_v0_names_and_4d_linear_weights(tmp_path):
    meta, sd, outputs = fixture_model("vmamba_v0_reduced")
    legacy = {}
    for k, v in sd.items():
        k = k.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
        k = k.replace(".blocks.0.norm.", ".blocks.0.ln_1.").replace(".blocks.1.norm.", ".blocks.1.ln_1.")
        k = k.replace(".op.", ".self_attention.")
        k = k.replace("classifier.norm.", "norm.").replace("classifier.head.", "head.")
        legacy[k] = v
    assert "layers.0.blocks.0.ln_1.weight" in legacy and "head.weight" in legacy
    path = tmp_path / "v0.pth"
    torch.save({"model": legacy}, path)
    model = fresh(meta)
    vssm.load_checkpoint(model, str(path))
    torch.testing.assert_close(logits_of(model, outputs), outputs["__logits__"], rtol=0, atol=meta["tolerance"]["atol"])
    # a v0 file also loads into the channel-first (v05) build
    model = fresh(meta, norm_layer="ln2d", forward_type="v05")
    vssm.load_checkpoint(model, str(path))
    torch.testing.assert_close(logits_of(model, outputs), outputs["__logits__"], rtol=0, atol=meta["tolerance"]["atol"])

    meta, sd, outputs = fixture_model("vmamba_v2_s2_reduced")
    four_d = {k: (v[:, :, None, None] if k.endswith(("in_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight")) else v)
              for k, v in sd.items()}
    path = tmp_path / "v2_4d.pth"
    torch.save({"model": four_d}, path)
    model = fresh(meta)
    vssm.load_checkpoint(model, str(path))
    torch.testing.assert_close(logits_of(model, outputs), outputs["__logits__"], rtol=0, atol=meta["tolerance"]["atol"])


def test_mismatch_lists_keys_and_names_the_fitting_model(tmp_path):
    full = vssm.create_model("vmamba_tiny_s1l8")
    path = tmp_path / "s1l8.pth"
    torch.save({"model": full.state_dict()}, path)
    wrong = vssm.create_model("vmamba_tiny_s2l5")
    with pytest.raises(CheckpointError) as err:
        vssm.load_checkpoint(wrong, str(path))
    text = str(err.value)
    assert "unexpected keys" in text and "layers.2.blocks.5.norm.weight" in text  # stage 3 depth 8 vs 5
    assert "mis-shaped keys" in text and "layers.0.blocks.0.op.in_proj.weight: file (96, 96) vs model (192, 96)" in text
    assert "fits the registered model(s): vmamba_tiny_s1l8" in text
    # strict=False loads what fits and reports the rest
    result = vssm.load_checkpoint(wrong, str(path), strict=False)
    assert "layers.0.blocks.0.op.in_proj.weight" in result["missing"]
    # create_model(..., checkpoint=) is the same loader
    model = vssm.create_model("vmamba_tiny_s1l8", checkpoint=str(path))
    assert torch.equal(model.classifier.head.weight, full.classifier.head.weight)


def test_unreadable_files(tmp_path):
    meta, sd, _ = fixture_model()
    model = fresh(meta)
    good = tmp_path / "good.pth"
    torch.save({"model": sd}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a checkpoint\n")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    for path, message in [
        (truncated, "truncated or corrupt"),
        (text, "not a (PyTorch )?checkpoint"),
        (empty, "checkpoint file is empty"),
        (bad_st, "cannot read .* as safetensors"),
        (tmp_path, "is a directory"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            vssm.load_checkpoint(model, str(path))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        vssm.load_checkpoint(model, str(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="no state_dict of tensors"):
        extract_state_dict({"epoch": 3, "config": {"lr": 1.0}})


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    meta, sd, _ = fixture_model()
    path = tmp_path / "evil.pth"
    torch.save({"model": sd, "args": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        vssm.load_checkpoint(fresh(meta), str(path))
    assert not marker.exists()


def test_argparse_namespace_is_allowed(tmp_path):
    meta, sd, outputs = fixture_model()
    path = tmp_path / "with_args.pth"
    torch.save({"model": sd, "args": argparse.Namespace(lr=0.1, model="x"), "epoch": 1}, path)
    model = fresh(meta)
    vssm.load_checkpoint(model, str(path))
    torch.testing.assert_close(logits_of(model, outputs), outputs["__logits__"], rtol=0, atol=meta["tolerance"]["atol"])
