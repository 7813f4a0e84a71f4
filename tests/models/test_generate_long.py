"""Cached generation that runs past DePT's / EPT's ``max_length``: the tokens generated there get no position offset
(a full forward cannot take them, ``L <= max_length``), so the expectation is a greedy loop of full forward passes
of the base model over model inputs written out here, position by position."""

import pytest
import torch

from prompt_ops.models import DePTConfig, EPTConfig, attach
from prompt_ops.ops import reference
from tests.models.test_attach import VOCAB, move_off_init, tiny

pytest.importorskip("transformers")

MAX_LENGTH, PROMPT_LEN, NEW_TOKENS = 8, 5, 7  # positions 5..11 are generated: 5..7 inside the table, 8..11 past it
CONFIGS = {
    "dept": DePTConfig(num_tokens=3, rank=3, max_length=MAX_LENGTH),
    "ept": EPTConfig(num_tokens=3, rank=3, max_length=MAX_LENGTH, num_subspaces=2, subspace_rank=2),
}


def model_inputs(module, sequence: torch.Tensor, past_end_row: torch.Tensor | None = None) -> torch.Tensor:
    """``cat(prompt, W[id_p] + scale * A[p] @ B)`` with no offset at ``p >= max_length`` (or, for the guard,
    ``past_end_row`` of ``A`` there)."""
    weight, lora_a, lora_b = module.embedding.weight, module.lora_a, module.lora_b
    if hasattr(module, "w_gate"):
        params = (module.prompt, lora_a, lora_b, module.w_down, module.w_up, module.w_gate, module.b_gate)
        prompt = reference.ept_prompt(*params, module.scale)
    else:
        prompt = module.prompt
    rows = []
    for position in range(sequence.shape[1]):
        row = weight[sequence[:, position]]
        if position < MAX_LENGTH:
            row = row + module.scale * lora_a[position] @ lora_b
        elif past_end_row is not None:
            row = row + module.scale * past_end_row @ lora_b
        rows.append(row)
    return torch.cat([prompt.expand(sequence.shape[0], -1, -1), torch.stack(rows, dim=1)], dim=1)


def greedy_full_forwards(tuned, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    sequence = input_ids
    for _ in range(NEW_TOKENS):
        embeds = model_inputs(tuned.prompt_module, sequence, **kwargs)
        logits = tuned.base_model(inputs_embeds=embeds, use_cache=False).logits[:, -1]
        sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
    return sequence


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_cached_generation_past_max_length_matches_full_forwards(method):
    """On the tiny LLaMA (the tiny random GPT-2 decodes every row to one constant token here, which would hide the
    offsets: the guard below shows LLaMA's greedy tokens depend on them)."""
    tuned = attach(tiny("llama"), CONFIGS[method]).eval()
    move_off_init(tuned)
    with torch.no_grad():
        tuned.prompt_module.lora_b.mul_(30)  # large offsets: a wrong offset anywhere changes the greedy tokens
    input_ids = torch.randint(1, VOCAB, (3, PROMPT_LEN))
    generated = tuned.generate(input_ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                               eos_token_id=None)  # fmt: skip
    with torch.no_grad():
        expected = greedy_full_forwards(tuned, input_ids)
        # the guard: reusing A's last row past max_length (a plausible wrong extension) would give other tokens
        clamped = greedy_full_forwards(tuned, input_ids, past_end_row=tuned.prompt_module.lora_a[-1])
    assert generated.shape == (3, PROMPT_LEN + NEW_TOKENS)
    assert torch.equal(generated, expected)
    assert not torch.equal(clamped, expected)
    assert tuned.base_model.get_input_embeddings() is tuned.prompt_module.embedding  # restored
