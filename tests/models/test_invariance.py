"""Batch invariance of the prompt-tuned models (issue 12): a sequence's outputs at its real positions, and its greedy
tokens, do not depend on its padding (side and amount) or on its batch mates; ``positions="absolute"`` keeps the
model's own numbering of the padded sequence (the behaviour before the option); user ``position_ids`` are honoured.

The tiny models are built with a larger init than the configs' (tests/models/test_attach.py ``tiny``) so that their
outputs depend clearly on the positions: with the 0.02 init, LLaMA's rotary positions moved ADePT's outputs by less
than the 1e-5 tolerance.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prompt_ops.models import attach
from prompt_ops.ops import reference
from tests.models.test_attach import CONFIGS, VOCAB, move_off_init, tiny

pytest.importorskip("transformers")

INIT = 0.3
TOLERANCE = 1e-5  # norm-relative, fp32
METHODS = tuple(sorted(CONFIGS))
GENERATE = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
SIDES = [("gpt2", "left"), ("gpt2", "right"), ("llama", "left"), ("llama", "right"), ("bert-mlm", "right"),
         ("t5", "right")]  # fmt: skip


@functools.cache
def tuned_model(family: str, method: str, backend: str = "torch", positions: str = "tokens"):
    """The method on a tiny ``family`` model in eval mode, adapters moved off their init (built once, never changed:
    the tests only run it)."""
    config = dataclasses.replace(CONFIGS[method], positions=positions)
    tuned = attach(tiny(family, initializer_range=INIT), config, backend=backend).eval()
    torch.manual_seed(1)
    move_off_init(tuned)
    return tuned


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def sequences_of(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (length,), generator=generator) for length in lengths]


def pad_batch(sequences: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of the sequences padded with id 0 to the longest, on ``side``."""
    width = max(len(sequence) for sequence in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        columns = slice(width - len(sequence), width) if side == "left" else slice(0, len(sequence))
        ids[row, columns], mask[row, columns] = sequence, 1
    return ids, mask


def real_outputs(tuned, ids: torch.Tensor, mask: torch.Tensor, decoder_ids: torch.Tensor) -> list[torch.Tensor]:
    """Per row, its outputs at its real positions (the prompt rows, then its tokens), flattened: the logits of a
    causal or masked LM; T5's encoder states there and its decoder's logits (for ``decoder_ids``)."""
    rows = tuned.num_prompt_rows
    kwargs = {"decoder_input_ids": decoder_ids} if tuned.is_encoder_decoder else {}
    with torch.no_grad():
        out = tuned(input_ids=ids, attention_mask=mask, **kwargs)
    states = out.encoder_last_hidden_state if tuned.is_encoder_decoder else out.logits
    result = []
    for row in range(ids.shape[0]):
        real = torch.cat([torch.arange(rows), rows + mask[row].nonzero()[:, 0]])
        parts = [states[row, real].flatten()] + ([out.logits[row].flatten()] if tuned.is_encoder_decoder else [])
        result.append(torch.cat(parts))
    return result


def assert_batch_invariant(tuned, sequences: list[torch.Tensor], side: str, rows: list[int] | None = None) -> None:
    """Each sequence (of ``rows``, default all) alone gives the outputs it gets in the padded batch of all of them."""
    decoder_ids = torch.randint(1, VOCAB, (len(sequences), 3), generator=torch.Generator().manual_seed(2))
    batched = real_outputs(tuned, *pad_batch(sequences, side), decoder_ids)
    for row in range(len(sequences)) if rows is None else rows:
        sequence = sequences[row]
        alone = real_outputs(tuned, sequence[None], torch.ones(1, len(sequence), dtype=torch.long),
                             decoder_ids[row : row + 1])[0]  # fmt: skip
        assert relative(batched[row], alone) <= TOLERANCE, f"row {row} of lengths {[len(s) for s in sequences]}"


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family, side", SIDES)
def test_a_sequence_alone_equals_it_between_a_shorter_and_a_longer_mate(family, side, method, backend):
    assert_batch_invariant(tuned_model(family, method, backend), sequences_of([3, 5, 8]), side, rows=[1])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
def test_greedy_generation_alone_equals_batched(family, method):
    """The middle of three sequences; generation pads on the left for decoder-only models (T5: the encoder input, on
    the right)."""
    tuned = tuned_model(family, method)
    sequences = sequences_of([3, 5, 8])
    ids, mask = pad_batch(sequences, "right" if family == "t5" else "left")
    batched = tuned.generate(ids, attention_mask=mask, **GENERATE)[1]
    alone = tuned.generate(sequences[1][None], **GENERATE)[0]
    if tuned.is_encoder_decoder:
        assert torch.equal(batched, alone)
    else:
        assert torch.equal(batched[ids.shape[1] :], alone[len(sequences[1]) :])


@settings(max_examples=10, deadline=None)
@given(
    family_side=st.sampled_from([*SIDES, ("bert-mlm", "left")]),
    method=st.sampled_from(METHODS),
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_batch_invariance_over_lengths_sides_and_compositions(family_side, method, lengths, seed):
    family, side = family_side
    assert_batch_invariant(tuned_model(family, method), sequences_of(lengths, seed), side)


# ------------------------------------------------------------------------------------------------------------------
# positions="absolute" is the model's own numbering; user position_ids are honoured
# ------------------------------------------------------------------------------------------------------------------


def reference_embeds(module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model input of ``module``'s method written out with ops/reference.py, offsets at the padded index."""
    weight = module.embedding.weight
    name = type(module).__name__
    if name == "PromptTuning":
        return reference.prompt_embed(ids, weight, module.prompt, mask)
    if name == "ADePT":
        return reference.adept_embed(ids, weight, module.prompt, module.w_down, module.b_down, module.w_up,
                                     module.b_up, mask)  # fmt: skip
    if name == "LAMP":
        return reference.lamp_embed(ids, weight, module.u, module.q, module.v, module.pool, mask)
    low_rank = (module.lora_a, module.lora_b)
    if name == "DePT":
        return reference.dept_embed(ids, weight, module.prompt, *low_rank, module.scale, mask, positions="absolute")
    assert name == "EPT", name
    others = (module.w_down, module.w_up, module.w_gate, module.b_gate, module.scale)
    return reference.ept_embed(ids, weight, module.prompt, *low_rank, *others, mask, positions="absolute")


def base_outputs(tuned, embeds: torch.Tensor, mask: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return tuned.base_model(inputs_embeds=embeds, attention_mask=mask, **kwargs).logits


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert-mlm", "roberta"])
def test_absolute_positions_are_the_models_own_numbering(family, method):
    """Left-padded: ``"absolute"`` equals the base model over the reference input with no position ids (the padded
    index, RoBERTa's from its padding index + 1), which ``"tokens"`` does not."""
    ids, mask = pad_batch(sequences_of([3, 5, 8]), "left")
    absolute = tuned_model(family, method, positions="absolute")
    with torch.no_grad():
        got = absolute(input_ids=ids, attention_mask=mask).logits
    embeds, extended = reference_embeds(absolute.prompt_module, ids, mask)
    want = base_outputs(absolute, embeds, extended)
    assert relative(got, want) <= TOLERANCE
    tokens = tuned_model(family, method)
    with torch.no_grad():
        counted = tokens(input_ids=ids, attention_mask=mask).logits
    embeds, extended = reference_embeds(tokens.prompt_module, ids, mask)
    assert relative(counted, base_outputs(tokens, embeds, extended)) > 1e-3


@pytest.mark.parametrize("positions", ["tokens", "absolute"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert-mlm", "roberta"])
def test_user_position_ids_are_shifted_behind_the_prompt(family, positions):
    """The prompt's positions first (RoBERTa numbers from its padding index + 1 = 2), then the user's shifted by the
    prompt's length, in both modes and whatever the padding."""
    tuned = tuned_model(family, "lamp", positions=positions)
    rows = tuned.num_prompt_rows
    first = 2 if family == "roberta" else 0
    ids, mask = pad_batch(sequences_of([3, 5, 8]), "left")
    user = first + torch.tensor([[0, 0, 0, 0, 0, 1, 2, 3], [0, 0, 0, 5, 6, 7, 8, 9], [4, 1, 7, 0, 2, 2, 9, 3]])
    with torch.no_grad():
        got = tuned(input_ids=ids, attention_mask=mask, position_ids=user).logits
    expected_ids = torch.cat([first + torch.arange(rows).expand(3, rows), user + rows], dim=1)
    embeds, extended = reference_embeds(tuned.prompt_module, ids, mask)
    assert relative(got, base_outputs(tuned, embeds, extended, position_ids=expected_ids)) <= TOLERANCE
    with torch.no_grad():
        shared = tuned(input_ids=ids, attention_mask=mask, position_ids=user[2:]).logits  # (1, L): every row
    expected_ids = torch.cat([first + torch.arange(rows)[None], user[2:] + rows], dim=1)
    assert relative(shared, base_outputs(tuned, embeds, extended, position_ids=expected_ids)) <= TOLERANCE
