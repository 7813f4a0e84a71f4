"""Batch invariance of LPT: a sequence's outputs at its real positions are the same alone and in a batch with
shorter and longer mates, left- or right-padded, within 1e-5 relative in norm (fp32), on both backends and with
every generator. The same comparison with ``positions="absolute"`` (the padded columns) fails on left padding, so
the tests can tell."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prompt_ops.models import LPTConfig, attach
from prompt_ops.ops.lpt import MODES
from tests.models.test_lpt import VOCAB, tiny

pytest.importorskip("transformers")

TOLERANCE = 1e-5
DECODER = torch.tensor([[0, 5, 7]])  # T5's decoder input: the outputs compared are the decoder's logits
CASES = [(family, side) for family in ("gpt2", "llama", "bert", "t5") for side in ("left", "right")]


def batch_of(sequences: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask of ``sequences`` padded to the longest on ``side`` (pad id 0)."""
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        columns = slice(width - len(sequence), width) if side == "left" else slice(0, len(sequence))
        ids[row, columns], mask[row, columns] = torch.tensor(sequence), 1
    return ids, mask


def outputs(tuned, family: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The model's output per position: logits (GPT-2, LLaMA; T5's decoder), hidden states (BERT)."""
    kwargs = {"decoder_input_ids": DECODER.expand(ids.shape[0], -1)} if family == "t5" else {}
    with torch.no_grad():
        out = tuned(input_ids=ids, attention_mask=mask, **kwargs)
    return out.last_hidden_state if family == "bert" else out.logits


def relative_error(tuned, family: str, sequences: list[list[int]], row: int, side: str) -> float:
    """``|batched - alone| / |alone|`` over row ``row``'s real positions (T5: its decoder's positions)."""
    alone = outputs(tuned, family, *batch_of([sequences[row]], side))[0]
    ids, mask = batch_of(sequences, side)
    batched = outputs(tuned, family, ids, mask)[row]
    if family != "t5":
        batched = batched[mask[row].bool()]
    return float((batched - alone).norm() / alone.norm())


def lpt(model, mode: str, backend: str, positions: str = "tokens"):
    """LPT after layer 2 with a generator whose prompt matters (the default init's barely moves the outputs)."""
    config = LPTConfig(layer=2, num_tokens=3, hidden_size=8, mode=mode, positions=positions)
    tuned = attach(model, config, backend=backend).eval()
    torch.manual_seed(3)
    for param in tuned.prompt_module.parameters():
        param.data = torch.randn_like(param) * 0.3
    return tuned


def sequences(*lengths: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(sum(lengths))
    return [torch.randint(2, VOCAB, (length,), generator=generator).tolist() for length in lengths]


@pytest.fixture(scope="module")
def models() -> dict:
    """One tiny model per family, shared: each test attaches LPT and unloads it."""
    return {family: tiny(family, head=family != "bert") for family in ("gpt2", "llama", "bert", "t5")}


@pytest.mark.parametrize("family, side", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_a_sequence_alone_equals_it_in_a_batch(models, family, side, mode):
    """The middle sequence (5 tokens) with a 3- and an 8-token mate; both backends."""
    batch = sequences(3, 5, 8)
    for backend in ("torch", "triton"):
        tuned = lpt(models[family], mode, backend)
        try:
            assert relative_error(tuned, family, batch, 1, side) < TOLERANCE, backend
        finally:
            tuned.unload()


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
def test_absolute_positions_depend_on_left_padding(models, family):
    """Numbering the padded columns moves a left-padded row's positions (GPT-2's learned table, LLaMA's rotary
    distance to the prompt, T5's relative bias to the prompt): the comparison above fails."""
    tuned = lpt(models[family], "naive", "torch", positions="absolute")
    try:
        assert relative_error(tuned, family, sequences(3, 5, 8), 1, "left") > 1e-3
    finally:
        tuned.unload()


@settings(max_examples=12, deadline=None)
@given(
    family=st.sampled_from(["gpt2", "llama"]),
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    row=st.integers(0, 3),
    side=st.sampled_from(["left", "right"]),
    mode=st.sampled_from(MODES),
)
def test_any_batch_composition(models, family, lengths, row, side, mode):
    """Hypothesis over lengths, padding sides, batch compositions and generators (torch backend)."""
    tuned = lpt(models[family], mode, "torch")
    try:
        assert relative_error(tuned, family, sequences(*lengths), row % len(lengths), side) < TOLERANCE
    finally:
        tuned.unload()
