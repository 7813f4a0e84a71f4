"""The shared prompt pass of a mixed-adapter batch (issue 14): decoder-only GPT-2, LLaMA, Mistral and Qwen2 run
each adapter's prompt once per adapter state (kept per adapter), then only the input tokens, with the outputs of
the unshared mixed path (every row's prompt run in the batch).

Which path ran is observed from the base model's calls: shared, one ``(1, m_a)`` call per adapter whose pass is not
kept, then ``(B, L)``; unshared, one ``(B, m_max + L)`` call.
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from prompt_ops.models import PromptTuningConfig, attach_many
from prompt_ops.models.mixed_prompt import MixedPromptPass
from prompt_ops.models.shared_prompt import PromptPass
from tests.models.model_state import ModelState
from tests.models.test_attach import tiny
from tests.models.test_bank_methods import BANKS
from tests.models.test_bank_methods import LENGTHS as BANK_LENGTHS
from tests.models.test_bank_methods import ROWS as BANK_ROWS
from tests.models.test_multi_adapter import ADAPTERS, ROWS, batch
from tests.models.test_shared_prompt import FAMILIES, GREEDY, LOGGER, decoder, shape_calls

TOL = {"rtol": 1e-5, "atol": 1e-5}
PROMPT_CALLS = [(1, 5), (1, 3), (1, 2)]  # "long", "plain", "short": the adapters of ROWS, in the bank's order


def mixed_decoder(family: str, seed: int = 1, adapters=ADAPTERS, dropout: float = 0.0, **kwargs):
    """The bank of ``adapters`` (default: the ragged ``ADAPTERS``) over a tiny ``family`` decoder (every dropout
    probability ``dropout``) in eval mode, every adapter tensor moved off its init (zero B would hide the
    offsets)."""
    multi = attach_many(decoder(family, dropout), adapters, **kwargs).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for name in multi.adapter_names:
            for tensor in multi.adapter_state_dict(name).values():
                tensor.add_(0.1 * torch.randn_like(tensor))
    return multi


def compared_columns(multi, names, mask: torch.Tensor) -> torch.Tensor:
    """``(B, m_max + L)`` bool: each adapter row's ``m_a`` prompt columns and every input column, a ``"__base__"``
    row's real tokens. Not the masked slots, nor a base row's pads: there a query no key may answer gets what the
    attention implementation gives it (eager: an average over every key of the row), which nothing reads."""
    slots = multi.bank.num_slots
    columns = torch.zeros(len(names), slots + mask.shape[1], dtype=torch.bool)
    for b, name in enumerate(names):
        if name == "__base__":
            columns[b, slots:] = mask[b].bool()
        else:
            columns[b, slots - multi.bank.config(name).num_tokens :] = True
    return columns


def mixed_call(multi, shared: bool | None, ids, mask, names, **kwargs):
    multi.shared_prompt = shared
    with torch.no_grad():
        return multi(input_ids=ids, attention_mask=mask, adapter_names=names, **kwargs)


def assert_equals_unshared(multi, ids, mask, names, labels=None, hidden: bool = False):
    """One shared eval forward against the unshared mixed path: shapes, the compared columns' logits (and hidden
    states), the loss; the masked slot columns are zero. Returns the shared output."""
    kwargs = {"labels": labels, "output_hidden_states": hidden}
    want = mixed_call(multi, False, ids, mask, names, **kwargs)
    got = mixed_call(multi, None, ids, mask, names, **kwargs)
    columns = compared_columns(multi, names, mask)
    assert got.logits.shape == want.logits.shape
    torch.testing.assert_close(got.logits[columns], want.logits[columns], **TOL)
    slots = multi.bank.num_slots
    for b, name in enumerate(names):
        first = slots - (0 if name == "__base__" else multi.bank.config(name).num_tokens)
        assert got.logits[b, :first].eq(0).all()
    if labels is not None:
        torch.testing.assert_close(got.loss, want.loss, **TOL)
    if hidden:
        assert len(got.hidden_states) == len(want.hidden_states)
        for got_states, want_states in zip(got.hidden_states, want.hidden_states, strict=True):
            torch.testing.assert_close(got_states[columns], want_states[columns], **TOL)
    return got


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_eval_forward_runs_each_adapters_prompt_once_and_equals_the_unshared_mixed_path(family, side):
    """Ragged prompts (5, 3, 2 rows), DePT and prompt tuning, ``"__base__"`` rows; Mistral's window (6 keys) is
    shorter than a prompted row. A second call with another mix reuses every kept pass."""
    multi = mixed_decoder(family)
    ids, mask, labels = batch(side)
    calls = shape_calls(multi.base_model)
    assert_equals_unshared(multi, ids, mask, ROWS, labels, hidden=True)
    assert calls[1:] == [*PROMPT_CALLS, (6, 7)]  # after the unshared call: each prompt once, then the input only
    names = ["short", "__base__", "short", "long"]
    del calls[:]
    assert_equals_unshared(multi, ids[:4], mask[:4], names)
    assert calls[1:] == [(4, 7)]
    assert {name: cache.builds for name, cache in multi.prompt_caches.items()} == {"long": 1, "plain": 1, "short": 1}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_cache_holds_each_rows_adapter_pass_then_its_input_and_the_kept_passes_stay_unwritten(family):
    """The shared forward's cache (``use_cache``), written by each layer on its first update: every layer's keys and
    values have the unshared mixed path's shape (Mistral's window of 6 keeps the last 5 of the 12 columns) and
    values at the compared columns, and zeros at the masked slots in front of each row's prompt. A second call,
    reading the kept passes, returns the same cache: the batch's cache did not write them."""
    multi = mixed_decoder(family)
    ids, mask, _ = batch("left")
    want = mixed_call(multi, False, ids, mask, ROWS, use_cache=True).cache
    slots = multi.bank.num_slots
    prompt_starts = [slots - (0 if name == "__base__" else multi.bank.config(name).num_tokens) for name in ROWS]
    for repeat in range(2):
        got = mixed_call(multi, None, ids, mask, ROWS, use_cache=True).cache
        assert [cache.builds for cache in multi.prompt_caches.values()] == [1, 1, 1]
        for got_layer, want_layer in zip(got.layers, want.layers, strict=True):
            width = want_layer.keys.shape[2]
            columns = compared_columns(multi, ROWS, mask)[:, -width:]
            slot_columns = torch.arange(slots + mask.shape[1])[-width:]
            for got_tensor, want_tensor in ((got_layer.keys, want_layer.keys), (got_layer.values, want_layer.values)):
                assert got_tensor.shape == want_tensor.shape, repeat
                got_rows, want_rows = got_tensor.transpose(1, 2), want_tensor.transpose(1, 2)  # (B, columns, h, hd)
                torch.testing.assert_close(got_rows[columns], want_rows[columns], **TOL)
                for b, start in enumerate(prompt_starts):
                    assert got_rows[b, slot_columns < start].eq(0).all(), (repeat, b)


class OtherKind(DynamicLayer):
    """A layer kind the first update does not know: it writes the prompt columns, then runs the kind's update."""


@pytest.mark.parametrize("kind", ["dynamic", "sliding", "sliding recording its past", "other"])
def test_a_layers_first_update_returns_and_keeps_what_its_kind_keeps_after_the_gathered_prompt(kind):
    """Each layer of a mixed pass's cache against its kind's own update of an independently gathered prompt:
    passes of 3 and 1 columns (heads 2, head_dim 4), rows [pass 0, none, pass 1, pass 0], 3 prompt columns, 2 new
    ones, a window of 3 keys for the sliding kinds (which keep the last 2 columns)."""
    torch.manual_seed(0)
    make = {
        "dynamic": DynamicLayer, "other": OtherKind, "sliding": lambda: DynamicSlidingWindowLayer(sliding_window=3),
        "sliding recording its past": lambda: DynamicSlidingWindowLayer(sliding_window=3),
    }[kind]  # fmt: skip
    passes, row_pass, slots = [], torch.tensor([0, -1, 1, 0]), 3
    for columns in (3, 1):
        layer = make()
        layer.update(torch.randn(1, 2, columns, 4), torch.randn(1, 2, columns, 4))
        passes.append(PromptPass(torch.zeros(1, 1, 5), None, (layer,), columns))
    new_keys, new_values = torch.randn(4, 2, 2, 4), torch.randn(4, 2, 2, 4)
    mixed = MixedPromptPass(torch.zeros(4, 1, 5), None, (), slots, tuple(passes), row_pass)
    got = mixed.batch_cache(4).layers[0]
    want = make()
    gathered = [torch.zeros(4, 2, slots, 4), torch.zeros(4, 2, slots, 4)]
    for row, entry in enumerate(row_pass.tolist()):
        if entry >= 0:
            kept = passes[entry].layers[0]
            for tensor, source in zip(gathered, (kept.keys, kept.values), strict=True):
                tensor[row, :, slots - source.shape[2] :] = source[0]
    want.update(*gathered)  # the kind's own: a sliding layer keeps the last 2 of the 3 columns, counts all 3
    if kind == "sliding recording its past":
        got.activate_past_recording()
        want.activate_past_recording()
    assert got.get_seq_length() == want.get_seq_length() == slots
    assert got.get_mask_sizes(2) == want.get_mask_sizes(2)
    returned, want_returned = got.update(new_keys, new_values), want.update(new_keys, new_values)
    for got_tensor, want_tensor in zip(
        (*returned, got.keys, got.values), (*want_returned, want.keys, want.values), strict=True
    ):
        assert torch.equal(got_tensor, want_tensor)
    assert got.get_seq_length() == want.get_seq_length()
    assert passes[0].layers[0].keys.shape[2] == (2 if "sliding" in kind else 3)  # the kept pass: not written


@pytest.mark.parametrize("keep", [1, 7, 9, 12])
def test_logits_to_keep_keeps_the_last_columns_of_the_unshared_mixed_path(keep):
    """A prefill's count of last columns: the input only (1, 7), two prompt columns in front (9), every one (12 =
    m_max + L). The batch's prompt logits are gathered for the kept columns only; the compared columns as above."""
    multi = mixed_decoder("llama")
    ids, mask, _ = batch("left")
    want = mixed_call(multi, False, ids, mask, ROWS, logits_to_keep=keep).logits
    got = mixed_call(multi, None, ids, mask, ROWS, logits_to_keep=keep).logits
    columns = compared_columns(multi, ROWS, mask)[:, -keep:]
    assert got.shape == want.shape == (len(ROWS), keep, want.shape[-1])
    torch.testing.assert_close(got[columns], want[columns], **TOL)


def test_the_kept_passes_are_rebuilt_after_an_optimizer_step_and_on_add_delete_and_load(tmp_path):
    """Each change moves the outputs (so a stale pass would fail the comparison) and rebuilds exactly the passes
    the next call needs; a training step runs the adapters' prompts in one call, under grad, and keeps none."""
    multi = mixed_decoder("llama")
    ids, mask, labels = batch("left")
    before = assert_equals_unshared(multi, ids, mask, ROWS).logits
    calls = shape_calls(multi.base_model)
    optimizer = torch.optim.Adam([param for param in multi.bank.parameters() if param.requires_grad], lr=0.1)
    multi.shared_prompt = None
    multi(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=ROWS).loss.backward()
    optimizer.step()
    assert calls == [(3, 5), (6, 7)]  # a row of each of the 3 adapters, its 5 columns with the slots
    del calls[:]
    after = assert_equals_unshared(multi, ids, mask, ROWS).logits
    assert calls[1:] == [*PROMPT_CALLS, (6, 7)] and not torch.allclose(after, before, **TOL)

    other = mixed_decoder("llama", seed=7)
    other.save_adapter("plain", tmp_path)
    multi.delete_adapter("plain")
    assert multi.prompt_caches == {}
    names = ["long", "__base__", "short", "short"]
    del calls[:]
    assert_equals_unshared(multi, ids[:4], mask[:4], names)
    assert calls[1:] == [(1, 5), (1, 2), (4, 7)]
    multi.load_adapter(tmp_path, adapter_name="plain")
    multi.add_adapter("extra", PromptTuningConfig(num_tokens=4))
    names = ["plain", "extra", "__base__", "long"]
    del calls[:]
    loaded = assert_equals_unshared(multi, ids[:4], mask[:4], names).logits
    assert calls[1:] == [(1, 5), (1, 3), (1, 4), (4, 7)]
    other_rows = mixed_call(other, False, ids[:1], mask[:1], ["plain"]).logits[0, 2:]
    torch.testing.assert_close(loaded[0, 2:], other_rows, **TOL)  # the loaded values, not the deleted adapter's


def test_uncovered_calls_run_every_rows_prompt_and_say_why(caplog):
    multi = mixed_decoder("gpt2", dropout=0.1)
    ids, mask, labels = batch("right")
    calls = shape_calls(multi.base_model)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        mixed_call(multi, None, ids, mask, ["__base__"] * 6)
        mixed_call(multi, None, ids, mask, ROWS, output_attentions=True)
        mixed_call(multi, False, ids, mask, ROWS)
        multi.shared_prompt = None
        multi.train()  # its dropout acts
        multi(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=ROWS)
        multi.eval()  # no dropout, grad on: each adapter row its own adapter
        own = ["long", "__base__", "plain", "short", "__base__", "__base__"]
        multi(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=own)
        assert calls == [(6, 5 + 7)] * 5 and multi.prompt_caches == {}
        multi.shared_prompt = True  # forced, it shares
        multi(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=own)
    assert calls[5:] == [(3, 5), (6, 7)]
    for reason in ("no row of the batch uses an adapter", "['output_attentions']", "shared_prompt=False",
                   "dropout is active", "every adapter row of the batch has its own adapter"):  # fmt: skip
        assert reason in caplog.text


def trained(multi, shared: bool | None, ids, mask, labels, names):
    """One forward and backward of a mixed batch under grad: the output and every bank parameter's gradient."""
    multi.shared_prompt = shared
    multi.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # ADePT's dropout (on the input rows) draws the same mask on both paths
    out = multi(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=names, output_hidden_states=True)
    out.loss.backward()
    return out, {name: param.grad.clone() for name, param in multi.bank.named_parameters() if param.grad is not None}


@pytest.mark.parametrize(
    "family, adapters, rows",
    [*[(family, "ragged", "left") for family in FAMILIES], ("gpt2", "every method", "right"),
     ("llama", "every method", "left")],
)  # fmt: skip
def test_training_shares_each_adapters_prompt_pass_and_equals_the_unshared_mixed_path(family, adapters, rows):
    """Under grad (no dropout acting), the adapters' prompts run in one call, a row each (its masked slots in
    front), with autograd, each row's keys and values read by its adapter's rows: the loss, the compared columns'
    logits and hidden states, and every
    gradient of the bank's tables equal the unshared mixed path's (each table's own rows only: each adapter gets the
    gradients of its own rows). The ragged bank of DePT and prompt tuning on every family; every bank method
    (prompt tuning, DePT, ADePT, LAMP, EPT) on GPT-2 and LLaMA."""
    ragged = adapters == "ragged"
    names = ROWS if ragged else BANK_ROWS["all"]
    multi = mixed_decoder(family, adapters=ADAPTERS if ragged else BANKS["all"]).train()
    ids, mask, labels = batch(rows) if ragged else batch(rows, BANK_LENGTHS)
    calls = shape_calls(multi.base_model)
    want, want_grads = trained(multi, False, ids, mask, labels, names)
    got, got_grads = trained(multi, None, ids, mask, labels, names)
    distinct = len(set(names) - {"__base__"})
    assert calls == [(len(names), multi.bank.num_slots + 7), (distinct, multi.bank.num_slots), (len(names), 7)]
    assert multi.prompt_caches == {}
    torch.testing.assert_close(got.loss, want.loss, **TOL)
    columns = compared_columns(multi, names, mask)
    torch.testing.assert_close(got.logits[columns], want.logits[columns], **TOL)
    for got_states, want_states in zip(got.hidden_states, want.hidden_states, strict=True):
        torch.testing.assert_close(got_states[columns], want_states[columns], **TOL)
    assert sorted(got_grads) == sorted(want_grads) and want_grads
    for name, grad in want_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(got_grads[name], grad, **TOL)


def test_encoders_run_unshared_and_refuse_a_forced_shared_pass():
    model = tiny("bert-mlm")
    state = ModelState.of(model)
    with pytest.raises(ValueError, match="shared_prompt=True: .*not a decoder-only causal LM"):
        attach_many(model, ADAPTERS, shared_prompt=True)
    state.assert_unchanged(model, "a refused shared_prompt=True")
    multi = attach_many(model, ADAPTERS).eval()
    calls = shape_calls(multi.base_model)
    ids, mask, _ = batch("right")
    mixed_call(multi, None, ids, mask, ROWS)
    assert calls == [(6, 5 + 7)]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_prefills_only_the_input_tokens_and_equals_the_unshared_prefill(family):
    """Left padding; greedy, then beams with returned sequences (each row's copies read its own adapter's pass)."""
    multi = mixed_decoder(family)
    ids, mask, _ = batch("left")
    beams = {**GREEDY, "num_beams": 2, "num_return_sequences": 2}
    calls = shape_calls(multi.base_model)
    for settings, copies in ((GREEDY, 1), (beams, 2)):
        multi.shared_prompt = False
        want = multi.generate(ids, attention_mask=mask, adapter_names=ROWS, **settings)
        multi.shared_prompt = None
        del calls[:]
        got = multi.generate(ids, attention_mask=mask, adapter_names=ROWS, **settings)
        assert torch.equal(got, want)
        kept = [] if copies > 1 else PROMPT_CALLS  # the greedy call kept every pass
        assert calls[: len(kept) + 1] == [*kept, (6 * copies, 7)]
