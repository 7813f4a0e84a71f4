"""Cached generation equals a greedy loop of full forward passes without cache, for every method."""

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


def greedy_without_cache(tuned, input_ids, steps):
    sequence = input_ids
    for _ in range(steps):
        logits = tuned(input_ids=sequence, use_cache=False).logits[:, -1]
        sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
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
