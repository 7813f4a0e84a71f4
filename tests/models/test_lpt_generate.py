"""LPT generation on decoder-only models with the KV cache: the input is the source, the prompt is computed from it
at prefill and stays in the upper layers' cache; every step after feeds one token. Checked against a loop of full
forward passes with the source fixed, and row by row against generating each sequence alone."""

import warnings

import pytest
import torch

from prompt_ops.models import LPTConfig, attach
from prompt_ops.models.stacks import bind
from tests.models.model_state import ModelState
from tests.models.test_lpt import VOCAB, tiny

transformers = pytest.importorskip("transformers")

LAYER, NUM_TOKENS, NEW = 2, 3, 4


def lively(family: str, mode: str, backend: str):
    """A tiny LM whose greedy tokens vary from step to step (the default init repeats one token), with LPT."""
    model = tiny(family, head=True)
    torch.manual_seed(4)
    for param in model.parameters():
        param.data = torch.randn_like(param) * 0.1
    tuned = attach(model, LPTConfig(layer=LAYER, num_tokens=NUM_TOKENS, hidden_size=8, mode=mode), backend=backend)
    return tuned.eval()


def left_padded():
    torch.manual_seed(5)
    ids = torch.randint(2, VOCAB, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    return ids.masked_fill(mask == 0, 0), mask


def generate(tuned, ids, mask=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny configs' pad/eos token notices
        return tuned.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                              **kwargs)  # fmt: skip


def recompute(tuned, ids, mask):
    """Greedy tokens from full forward passes, the source fixed to the input's real tokens."""
    source = mask.sum(1)
    with torch.no_grad():
        for _ in range(NEW):
            logits = tuned(input_ids=ids, attention_mask=mask, source_lengths=source).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mode", ["naive", "pool"])
def test_cached_generation_equals_recomputation_and_each_row_alone(family, backend, mode):
    tuned = lively(family, mode, backend)
    ids, mask = left_padded()
    widths = []  # the tokens each pass through the stack takes: the whole input once, then one at a time
    handle = tuned.stack.entry.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(bind(module, args, kwargs).arguments["input_ids"].shape[1]),
        with_kwargs=True,
    )
    cached = generate(tuned, ids, mask)
    handle.remove()
    assert widths == [7] + [1] * (NEW - 1)
    expected = recompute(tuned, ids, mask)
    assert torch.equal(cached, expected)
    assert len({tuple(row) for row in cached[:, 7:].tolist()}) > 1 and len(set(cached[0, 7:].tolist())) > 1
    assert torch.equal(generate(tuned, ids, mask, use_cache=False), expected)  # the source stays the input
    for row in range(3):
        alone = ids[row : row + 1, int((mask[row] == 0).sum()) :]
        assert torch.equal(generate(tuned, alone)[0, -NEW:], cached[row, -NEW:])


def test_generation_follows_the_positions_option():
    """'absolute' numbers the padded columns: the left-padded rows' tokens are what a recomputation with those
    positions gives, and (GPT-2 adds a learned position per column) no longer what the rows give alone."""
    tuned = lively("gpt2", "naive", "torch")
    tuned.config.positions = "absolute"
    ids, mask = left_padded()
    cached = generate(tuned, ids, mask)
    source, sequence, keep = mask.sum(1), ids, mask
    with torch.no_grad():
        for _ in range(NEW):
            columns = torch.arange(sequence.shape[1])[None]
            logits = tuned(input_ids=sequence, attention_mask=keep, source_lengths=source, position_ids=columns).logits
            sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            keep = torch.cat([keep, torch.ones_like(keep[:, :1])], dim=1)
    assert torch.equal(cached, sequence)
    tuned.config.positions = "tokens"
    assert not torch.equal(generate(tuned, ids, mask), cached)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_forward_continues_a_cache_filled_by_a_forward(family):
    """Layers 1..k cache the L tokens, the layers above k the n prompt rows more; a step fed its cache gives the
    logits a full pass gives with the same source."""
    tuned = lively(family, "pool", "torch")
    ids, mask = left_padded()
    with torch.no_grad():
        prefill = tuned(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = prefill.cache
        assert [cache.get_seq_length(i) for i in range(4)] == [7, 7, 7 + NUM_TOKENS, 7 + NUM_TOKENS]
        token = prefill.logits[:, -1:].argmax(-1)
        longer = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step = tuned(input_ids=token, attention_mask=longer, cache=cache).logits
        full = tuned(input_ids=torch.cat([ids, token], 1), attention_mask=longer, source_lengths=mask.sum(1)).logits
    assert [cache.get_seq_length(i) for i in range(4)] == [8, 8, 8 + NUM_TOKENS, 8 + NUM_TOKENS]
    torch.testing.assert_close(step[:, -1], full[:, -1], rtol=1e-5, atol=1e-5)


def test_a_cache_lpt_did_not_fill_is_refused_by_name():
    tuned = lively("gpt2", "naive", "torch")
    ids, mask = left_padded()
    longer = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    token = ids[:, :1]
    with torch.no_grad():
        plain = tuned.base_model.__class__(tuned.base_model.config).eval()  # no LPT: every layer caches L
        foreign = plain(input_ids=ids, attention_mask=mask, use_cache=True).cache
        lpt_cache = tuned(input_ids=ids, attention_mask=mask, use_cache=True).cache
    before = ModelState.of(tuned)
    cases = [
        ({"cache": foreign}, ValueError, r"the cache \(past_key_values\) was not filled by this LPT model"),
        ({"cache": lpt_cache, "source_lengths": mask.sum(1)}, ValueError, "source_lengths applies to a pass that"),
        ({"cache": lpt_cache, "attention_mask": mask}, ValueError, r"attention_mask of shape \(3, 8\) \(7 cached"),
        ({"cache": transformers.StaticCache(tuned.base_model.config, max_cache_len=16)}, ValueError,
         r"the cache \(past_key_values\) must be a DynamicCache"),
    ]  # fmt: skip
    for kwargs, error, pattern in cases:
        with pytest.raises(error, match=pattern), torch.no_grad():
            tuned(**{"input_ids": token, "attention_mask": longer, **kwargs})
        before.assert_unchanged(tuned, pattern)


def test_generate_refuses_labels_and_source_lengths_and_a_bad_edited_convention():
    """generate's input is the source: a labels or source_lengths there would silently redefine it. A typo set on
    the config after attach is refused where the convention is read, naming it."""
    tuned = lively("gpt2", "naive", "torch")
    ids, mask = left_padded()
    before = ModelState.of(tuned)
    for name, value in (("labels", ids), ("source_lengths", mask.sum(1))):
        with pytest.raises(ValueError, match=f"does not take {name}"):
            generate(tuned, ids, mask, **{name: value})
        before.assert_unchanged(tuned, name)
    tuned.config.positions = "Tokens"
    with pytest.raises(ValueError, match="config.positions"):
        generate(tuned, ids, mask)
    with pytest.raises(ValueError, match="config.positions"), torch.no_grad():
        tuned(input_ids=ids, attention_mask=mask)
    before.assert_unchanged(tuned, "config.positions")
