"""The bench's measurements and report on small shapes (the full run is `make bench`)."""

import dataclasses

import pytest
import torch

from bench.measure import FAMILIES, EmbedShape, measure, measure_folding
from bench.run import README_END, README_START, render_markdown, update_readme
from bench.train_step import measure_train_step
from prompt_ops.profiling.memory import saved_activations
from tests.conftest import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="the CPU bench counts kernels under the interpreter")

SMALL = EmbedShape(
    batch=2, seq_len=24, num_prompt=5, hidden=64, rank=6, max_length=32, vocab=500, lamp_tokens=12, lpt_tokens=3
)
# 48 tokens make one ADePT weight split, so no partial-sum launch follows.
# EPT backward: DePT's two launches, the builder's seven, and the two adds that sum lora_a's and lora_b's paths.
# LPT: the generator's three backward launches; forward, its two launches and the copy of the hidden states.
FUSED_BACKWARD_LAUNCHES = {
    "prompt_embed": 1, "dept_embed": 2, "adept_embed": 2, "lamp_embed": 2, "ept_embed": 11, "lpt_insert": 3,
}  # fmt: skip
FUSED_FORWARD_LAUNCHES = {"ept_embed": 4, "lpt_insert": 3}  # EPT: three prompt-builder launches, then the per-token one


@pytest.mark.parametrize("op", sorted(FAMILIES))
@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_measure_small_case(op, mode):
    row = measure(op, SMALL, mode, repeat=2)
    assert row.correct
    assert row.fused_launches == (
        FUSED_FORWARD_LAUNCHES.get(op, 1) if mode == "forward" else FUSED_BACKWARD_LAUNCHES[op]
    )
    if mode == "forward":
        assert row.naive_launches >= 3
        if op == "ept_embed":  # the builder's intermediates (Q, the attention) are real traffic, but less than naive
            assert row.ideal_bytes < row.fused_bytes < row.naive_bytes
        else:
            assert row.fused_bytes <= 1.1 * row.ideal_bytes
    assert row.fused_h100_us > 0 and row.cpu_naive_ms > 0 and row.cpu_torch_ms > 0


def test_folding_row():
    row = measure_folding(dataclasses.replace(SMALL, rank=19), repeat=2)
    assert row.outputs_match
    assert row.unfolded_launches == row.folded_launches == 1
    assert row.folded_bytes < row.unfolded_bytes  # no FFN weights to read


def test_report_round_trip(tmp_path):
    shape = {k: v for k, v in dataclasses.asdict(SMALL).items() if k not in ("batch", "rank")}
    payload = {
        "environment": {"cpu": "test", "torch": "t", "triton": "t", "commit": "abc", "date": "today"},
        "shape": {**shape, "ranks": {"dept_embed": 6}},
        "rows": [dataclasses.asdict(measure("dept_embed", SMALL, "forward", repeat=2))],
        "folding": [dataclasses.asdict(measure_folding(SMALL, repeat=2))],
        "training": [dataclasses.asdict(row) for row in training_rows()],
        "compile": [{"label": "k", "registers": 10, "spill_bytes": 0, "shared_bytes": 0}],
    }
    markdown = render_markdown(payload)
    assert "| dept_embed | forward | 2 |" in markdown and "| k | 10 | 0 | 0 |" in markdown
    assert "| lpt | " in markdown and "| prompt_tuning | " in markdown
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\noutro\n")
    update_readme(markdown, readme)
    assert readme.read_text() == f"intro\n{README_START}\n{markdown}{README_END}\noutro\n"
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        update_readme(markdown, readme)


def tiny_bert():
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=160)  # fmt: skip
    return transformers.BertModel(config).eval()


def training_rows():
    return [
        measure_train_step(tiny_bert(), "tiny-bert", method, 2, 16, repeat=2) for method in ("prompt_tuning", "lpt")
    ]


def test_training_step_rows():
    """LPT keeps fewer activations than prompt tuning: nothing below layer k is saved, and 5 rows instead of 100."""
    prompt_tuning, lpt = training_rows()
    assert prompt_tuning.trainable_params == 100 * 32 and lpt.trainable_params == 32 * 128 + 128 + 128 * 5 * 32 + 5 * 32
    assert 0 < lpt.activation_mb < prompt_tuning.activation_mb
    assert lpt.step_ms > 0 and lpt.tokens_per_s > 0


def test_saved_activations_counts_what_autograd_keeps():
    weight = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8)
    with saved_activations(exclude=[weight]) as saved:
        hidden = torch.relu(x @ weight)  # saves x (weight excluded) and relu's output
        with torch.no_grad():
            torch.relu(hidden @ weight)  # nothing saved without gradients
    assert saved.tensors == 2 and saved.bytes == 2 * 4 * 8 * 4
