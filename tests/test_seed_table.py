"""benchmarks/seed_table.py: the seed statistics that the Fashion-MNIST results quote."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "seed_table", Path(__file__).resolve().parents[1] / "benchmarks" / "seed_table.py")
seed_table = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(seed_table)


def _results(tmp_path, name, train_args, rows):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(dict(plan=dict(train_args=train_args), rows=rows)))
    return str(path)


def test_lead_is_welch_difference_of_means():
    a, b = [96.0, 95.0, 95.5], [95.2, 94.6]
    var_a = sum((x - 95.5) ** 2 for x in a) / 2
    var_b = sum((x - 94.9) ** 2 for x in b) / 1
    got = seed_table.lead(a, b)
    assert got["diff"] == pytest.approx(0.6)
    assert got["se"] == pytest.approx(math.sqrt(var_a / 3 + var_b / 2))
    assert (got["wins"], got["pairs"]) == (5, 6)  # 95.0 loses to 95.2 only
    assert seed_table.lead([95.0], b)["se"] is None


def test_runs_grouped_by_model_and_seed(tmp_path):
    paths = [
        _results(tmp_path, "a0", "--eval-every 10", [dict(model_name="a", acc1=95.0, acc1_hflip=95.1)]),
        _results(tmp_path, "a3", "--seed 3 --time-budget 1", [dict(model_name="a", acc1=96.0, acc1_hflip=None)]),
        _results(tmp_path, "b1", "--seed=1", [dict(model_name="b", acc1=94.0, acc1_hflip=94.5)]),
    ]
    runs = seed_table.load_runs(paths)
    assert list(runs) == ["a", "b"] and sorted(runs["a"]) == [0, 3] and list(runs["b"]) == [1]
    text = seed_table.table(runs)
    assert "| a | 0 / 3 | 95.00 / 96.00 | 95.500 | 0.707 |" in text
    assert "| b | +1.500 | - | - | 2 of 2 |" in text
    assert "| a | 0 | 95.10 | 95.100 | - |" in text  # a missing TTA value leaves that seed out


def test_bad_input_is_refused_clearly(tmp_path):
    twice = _results(tmp_path, "a", "", [dict(model_name="a", acc1=95.0)])
    with pytest.raises(SystemExit, match="seed 0 appears twice"):
        seed_table.load_runs([twice, twice])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="not a results.json"):
        seed_table.load_runs([str(bad)])
    with pytest.raises(SystemExit, match="--first c is not among"):
        seed_table.main([twice, "--first", "c"])


def test_seed_comes_from_every_call_of_a_row(tmp_path):
    """A run stopped by --stop-after-minutes and resumed keeps each call's command; its seed is read from them, not
    from the plan, which holds only the last call's train args."""
    row = dict(model_name="a", acc1=95.0,
               commands=["train --model a --seed 2", "train --model a --seed=2 --resume auto"])
    runs = seed_table.load_runs([_results(tmp_path, "a2", "--eval-every 10", [row])])
    assert list(runs["a"]) == [2]
    mixed = dict(row, commands=["train --model a --seed 1", "train --model a --resume auto"])
    with pytest.raises(SystemExit, match=r"trained with seeds \[0, 1\]"):
        seed_table.load_runs([_results(tmp_path, "mixed", "--seed 1", [mixed])])
