"""benchmarks/fashion_mnist_gpu.py: what it records of a run (the training itself is measured on the GPU)."""
import importlib.util
import json
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "fashion_mnist_gpu", Path(__file__).resolve().parents[1] / "benchmarks" / "fashion_mnist_gpu.py")
gpu = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gpu)


def test_calls_of_a_run_are_kept_beside_its_checkpoints(tmp_path):
    """The list survives a new --out (each device command has its own); a call that does not continue the run, or
    finds no checkpoint to continue, starts it afresh."""
    record_call, run = gpu.record_call, tmp_path / "run"
    assert record_call(str(run), "c1 --seed 1", continues=True) == ["c1 --seed 1"]
    assert record_call(str(run), "c2", continues=True) == ["c2"]  # no checkpoint yet: the first call was lost
    (run / "checkpoints").mkdir()
    assert record_call(str(run), "c3", continues=True) == ["c2", "c3"]
    assert json.loads((run / "benchmark-calls.json").read_text()) == ["c2", "c3"]
    assert record_call(str(run), "c4 --overwrite", continues=False) == ["c4 --overwrite"]


def test_results_md_lists_every_call_of_a_run(tmp_path):
    base = dict(model="m", params=1e6, epochs=2, train_time_s=60, img_per_s=1000, first_epoch_s=5, acc1=95.0,
                acc5=99.0, loss=0.2, acc1_raw=94.9, acc1_hflip=None, nonfinite_losses=0)
    rows = [dict(base, model_name="once", command="c1", commands=["c1", "c1"]),
            dict(base, model_name="twice", command="c3 --resume auto", commands=["c2 --seed 1", "c3 --resume auto"]),
            dict(base, model_name="old", command="c4")]  # a row written before the calls were kept
    plan = dict(preset="fashion-mnist", epochs=2, img_size=28, amp="bf16", train_args="")
    gpu.write_tables(str(tmp_path), rows, plan)
    text = (tmp_path / "results.md").read_text()
    assert "`once`: `c1`" in text and "`old`: `c4`" in text
    assert "`twice`, in 2 calls:\n1. `c2 --seed 1`\n2. `c3 --resume auto`" in text
    saved = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert saved[2]["model_name"] == "twice" and saved[2]["commands"] == ["c2 --seed 1", "c3 --resume auto"]


def test_flags_in_train_args_are_read_as_vssm_train_reads_them():
    """A screen entry's `--img-size 28` comes through --train-args, after the driver's own --img-size, so it is the
    size the model trains at and the one results.md must name; the last of repeated flags wins, as in argparse."""
    from types import SimpleNamespace
    args = SimpleNamespace(train_args="--eval-every 8 --img-size 28 --seed 1 --img-size=32")
    assert gpu.train_arg(args, "--img-size", 64) == 32
    assert gpu.eval_every(args) == 8
    assert gpu.train_arg(SimpleNamespace(train_args="--seed 1"), "--img-size", 64) == 64
    assert gpu.eval_every(SimpleNamespace(train_args="--eval-every 0")) == 1
