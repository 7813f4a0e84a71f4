"""Cached generation equals a greedy loop of full forward passes without cache, for every method."""

import dataclasses

import pytest
import torch

from prompt_ops.models import ADePTConfig, DePTConfig, EPTConfig, LAMPConfig, PromptTuningConfig, attach
from tests.models.test_attach import VOCAB, move_off_init, tiny

pytest.importorskip("transformers")

# max_length 16 > 5 input + 6 new tokens: every generated token is inside DePT's offset table.
GEN_CONFIGS = {
    "prompt_tuning": PromptTuningConfig(num_tokens=4),
    "dept": DePTConfig(num_tokens=4, rank=3, max_length=16),
    "adept": ADePTConfig(num_tokens=4, rank=3),
    "lamp": LAMPConfig(num_tokens=6, rank=2, pool=2),
    "ept": EPTConfig(num_tokens=4, rank=3, max_length=16, num_subspaces=2, subspace_rank=2),
}


def greedy_without_cache(tuned, input_ids, steps, attention_mask=None, position_ids=None):
    """Greedy tokens from full forward passes: each new token unmasked, its position one past its row's last."""
    sequence = input_ids
    for _ in range(steps):
        logits = tuned(input_ids=sequence, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False).logits[:, -1]  # fmt: skip
        sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(sequence), 1)], dim=1)
        if position_ids is not None:
            position_ids = torch.cat([position_ids, position_ids[:, -1:] + 1], dim=1)
    return sequence


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", sorted(GEN_CONFIGS))
def test_cached_generation_matches_full_forward_passes(family, method):
    tuned = attach(tiny(family), GEN_CONFIGS[method]).eval()
    move_off_init(tuned)
    with torch.no_grad():
        for param in tuned.adapter_state_dict().values():
            param.mul_(10)  # large offsets: a generation that skipped them would pick other tokens
    input_ids = torch.randint(1, VOCAB, (2, 5))
    generated = tuned.generate(input_ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        expected = greedy_without_cache(tuned, input_ids, 6)
    assert torch.equal(generated, expected)
    assert tuned.base_model.get_input_embeddings() is tuned.prompt_module.embedding  # restored


@pytest.mark.parametrize("positions", ["tokens", "absolute"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", sorted(GEN_CONFIGS))
def test_cached_generation_of_a_left_padded_batch_matches_full_forward_passes(family, method, positions):
    """Prefill and every decoding step take the positions a full forward pass gives (each row from its own length
    counting real tokens; the padded index under "absolute")."""
    config = dataclasses.replace(GEN_CONFIGS[method], positions=positions)
    tuned = attach(tiny(family, initializer_range=0.3), config).eval()
    move_off_init(tuned)
    input_ids = torch.randint(1, VOCAB, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, :5], mask[1, :3] = 0, 0  # left padding: 3, 5 and 8 tokens
    generated = tuned.generate(input_ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                               eos_token_id=None)  # fmt: skip
    with torch.no_grad():
        expected = greedy_without_cache(tuned, input_ids, 6, attention_mask=mask)
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generation_continues_user_position_ids(family):
    """User positions are honoured at prefill (shifted behind the prompt) and continue one by one from each row's
    last, as transformers continues them."""
    tuned = attach(tiny(family, initializer_range=0.3), GEN_CONFIGS["lamp"]).eval()
    move_off_init(tuned)
    input_ids = torch.randint(1, VOCAB, (2, 5))
    position_ids = torch.tensor([[3, 4, 5, 6, 7], [0, 2, 4, 6, 8]])
    generated = tuned.generate(input_ids, position_ids=position_ids, max_new_tokens=6, do_sample=False,
                               pad_token_id=0, eos_token_id=None)  # fmt: skip
    with torch.no_grad():
        expected = greedy_without_cache(tuned, input_ids, 6, position_ids=position_ids)
        default = greedy_without_cache(tuned, input_ids, 6)
    assert torch.equal(generated, expected)
    assert not torch.equal(expected, default)  # the positions change the tokens


def test_offsets_matter_for_generated_tokens():
    """Guard for the test above: dropping DePT's offsets after prefill changes the greedy tokens."""
    tuned = attach(tiny("gpt2"), GEN_CONFIGS["dept"]).eval()
    move_off_init(tuned)
    with torch.no_grad():
        tuned.prompt_module.lora_b.mul_(30)
    input_ids = torch.randint(1, VOCAB, (2, 5))
    with_offsets = tuned.generate(input_ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    embeds, mask = tuned.prompt_module(input_ids)
    plain = tuned.base_model.generate(
        inputs_embeds=embeds, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
    )  # the official code's behaviour: no offset after prefill
    assert not torch.equal(with_offsets[:, 5:], plain)


def test_t5_generation_matches_full_forward_passes():
    tuned = attach(tiny("t5"), GEN_CONFIGS["dept"]).eval()
    move_off_init(tuned)
    input_ids = torch.randint(1, VOCAB, (2, 5))
    generated = tuned.generate(input_ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
    decoder = torch.zeros(2, 1, dtype=torch.long)  # decoder_start_token_id
    with torch.no_grad():
        for _ in range(generated.shape[1] - 1):
            logits = tuned(input_ids=input_ids, decoder_input_ids=decoder, use_cache=False).logits[:, -1]
            decoder = torch.cat([decoder, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, decoder)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_beam_search_keeps_each_rows_positions(family):
    """Beams are copies of their row: the middle of three left-padded sequences gets the beams it gets alone."""
    tuned = attach(tiny(family, initializer_range=0.3), GEN_CONFIGS["dept"]).eval()
    move_off_init(tuned)
    input_ids = torch.randint(1, VOCAB, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, :5], mask[1, :3] = 0, 0  # left padding: 3, 5 and 8 tokens
    beams = {"num_beams": 3, "max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    batched = tuned.generate(input_ids, attention_mask=mask, **beams)
    alone = tuned.generate(input_ids[1:2, 3:], **beams)
    assert torch.equal(batched[1, 8:], alone[0, 5:])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_num_return_sequences_repeat_each_rows_input(family):
    """``num_return_sequences`` copies of each row come back consecutively, each behind its own row's input ids; beam
    ``j`` of the middle of three left-padded rows is beam ``j`` of that row alone."""
    tuned = attach(tiny(family, initializer_range=0.3), GEN_CONFIGS["dept"]).eval()
    move_off_init(tuned)
    input_ids = torch.randint(1, VOCAB, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, :5], mask[1, :3] = 0, 0
    beams = {"num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 4, "do_sample": False, "pad_token_id": 0,
             "eos_token_id": None}  # fmt: skip
    batched = tuned.generate(input_ids, attention_mask=mask, **beams)
    assert batched.shape == (6, 12)
    assert torch.equal(batched[:, :8], input_ids.repeat_interleave(2, dim=0))
    alone = tuned.generate(input_ids[1:2, 3:], **beams)
    assert torch.equal(batched[2:4, 8:], alone[:, 5:])
