"""README's Python examples run, and its benchmark section is exactly what the bench generated."""

import json
import re
from pathlib import Path

import pytest

from bench.report import render_full, render_readme
from bench.run import README_END, README_START

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_readme_has_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index, monkeypatch):
    monkeypatch.chdir(ROOT)
    exec(compile(EXAMPLES[index], f"README.md example {index}", "exec"), {})


def test_readme_benchmark_section_is_generated_from_the_results():
    payload = json.loads((ROOT / "bench" / "results" / "ops.json").read_text())
    section = README.split(README_START, 1)[1].split(README_END, 1)[0]
    assert section == "\n" + render_readme(payload)
    assert (ROOT / "bench" / "results" / "ops.md").read_text() == render_full(payload)
