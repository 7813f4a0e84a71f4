"""The bench's measurement and report on a small shape (the full run is `make bench`)."""

import pytest

from bench.measure import EmbedShape, measure
from bench.run import README_END, README_START, render_markdown, update_readme
from tests.conftest import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="the CPU bench counts kernels under the interpreter")


@pytest.mark.parametrize("rank", [0, 6], ids=["prompt", "dept"])
@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_measure_small_case(rank, mode):
    shape = EmbedShape(batch=2, seq_len=24, num_prompt=5, hidden=64, rank=rank, max_length=32, vocab=500)
    row = measure(shape, mode, repeat=2)
    assert row.correct
    assert row.fused_launches == (1 if mode == "forward" or not rank else 2)
    assert row.naive_launches >= (3 if mode == "forward" else 0)
    if mode == "forward":
        assert row.fused_bytes <= 1.1 * row.ideal_bytes
    assert row.fused_h100_us > 0 and row.cpu_naive_ms > 0 and row.cpu_torch_ms > 0


def test_report_round_trip(tmp_path):
    shape = EmbedShape(batch=1, seq_len=8, num_prompt=2, hidden=16, rank=3, max_length=8, vocab=50)
    import dataclasses

    payload = {
        "environment": {"cpu": "test", "torch": "t", "triton": "t", "commit": "abc", "date": "today"},
        "shape": {k: v for k, v in dataclasses.asdict(shape).items() if k != "batch"},
        "rows": [dataclasses.asdict(measure(shape, "forward", repeat=2))],
        "compile": [{"label": "k", "registers": 10, "spill_bytes": 0, "shared_bytes": 0}],
    }
    markdown = render_markdown(payload)
    assert "| dept_embed | forward | 1 |" in markdown and "| k | 10 | 0 | 0 |" in markdown
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\noutro\n")
    update_readme(markdown, readme)
    assert readme.read_text() == f"intro\n{README_START}\n{markdown}{README_END}\noutro\n"
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        update_readme(markdown, readme)
