"""The shared prompt pass (issue 13): decoder-only GPT-2 and LLaMA run the prompt rows once per call, with the
outputs, loss and adapter gradients of the unshared path; auto mode's choice; the refusals.

Which path ran is observed from the base model's calls: the shared pass calls it twice (the prompt rows at batch 1,
then the input tokens), the unshared path once over the batch.
"""

from __future__ import annotations

import logging

import pytest
import torch

from prompt_ops.models import LPTConfig, attach
from tests.models.model_state import ModelState
from tests.models.test_attach import CONFIGS, HIDDEN, VOCAB, move_off_init, tiny

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-5  # norm-relative, fp32
METHODS = tuple(sorted(CONFIGS))
LOGGER = "prompt_ops.models.shared_prompt"


FAMILIES = ("gpt2", "llama", "mistral", "qwen2")
"""Every family the shared pass covers; the exactness tests run on all, the rest on GPT-2 and LLaMA."""


def decoder(family: str, dropout: float = 0.0):
    """A tiny two-layer ``family`` model (a larger init, so the outputs depend clearly on positions and the prompt),
    every dropout probability ``dropout``, in eval mode. Mistral's sliding window (6 keys) is shorter than a
    prompted row, so its window acts; Qwen2 has biased query/key/value projections."""
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=2, n_positions=64, initializer_range=0.3,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(config).eval()
    common = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, initializer_range=0.3, attention_dropout=dropout,
    )  # fmt: skip
    if family == "mistral":
        return transformers.MistralForCausalLM(transformers.MistralConfig(**common, sliding_window=6)).eval()
    if family == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)).eval()
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).eval()


def batch_calls(model) -> list[int]:
    """The batch size of each call to ``model``'s forward from now on."""
    calls = []
    model.register_forward_pre_hook(lambda _, args, kwargs: calls.append(kwargs["inputs_embeds"].shape[0]),
                                    with_kwargs=True)  # fmt: skip
    return calls


def padded_batch(side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, mask, labels)``: three rows of 3, 5 and 7 real tokens padded on ``side``, labels -100 on pads."""
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (3, 7), generator=generator)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for row, length in enumerate((3, 5, 7)):
        columns = slice(7 - length, 7) if side == "left" else slice(0, length)
        mask[row, columns] = 1
    return ids, mask, ids.masked_fill(mask == 0, -100)


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).detach().norm() / want.detach().norm())


def run(tuned, setting: bool | None, ids, mask, labels, **kwargs):
    """Output and adapter gradients of one forward and backward with ``shared_prompt = setting``; the RNG reseeded
    so that ADePT's own dropout (on the input rows) draws the same mask on either path."""
    tuned.shared_prompt = setting
    for param in tuned.adapter_state_dict().values():
        param.grad = None
    torch.manual_seed(5)
    out = tuned(input_ids=ids, attention_mask=mask, labels=labels, **kwargs)
    out.loss.backward()
    return out, {name: param.grad.clone() for name, param in tuned.adapter_state_dict().items()}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "family, dtype",
    [*((family, torch.float64) for family in FAMILIES), ("gpt2", torch.float32), ("llama", torch.float32)],
)
def test_shared_pass_equals_the_unshared_path(family, dtype, method, side, mode):
    """Logits over all ``m + L`` rows, hidden states, loss, the returned cache and every adapter gradient. In fp64
    for every family, so that what is compared is the arithmetic, not rounding: the two paths add in different
    orders, and EPT's gate gradient (two columns of opposite sign) cancels enough that fp32 rounding alone reaches
    the tolerance on some configurations (Qwen2's, 1.2e-5); in fp32 as well for GPT-2 and LLaMA."""
    tuned = attach(decoder(family).to(dtype), CONFIGS[method], backend="torch").train(mode == "train")
    torch.manual_seed(1)
    move_off_init(tuned)
    calls = batch_calls(tuned.base_model)
    ids, mask, labels = padded_batch(side)
    want, want_grads = run(tuned, False, ids, mask, labels, output_hidden_states=True)
    assert calls == [3]
    got, got_grads = run(tuned, None, ids, mask, labels, output_hidden_states=True)
    assert calls == [3, 1, 3]  # auto: no dropout acts, so the prompt ran once
    assert got.logits.shape == want.logits.shape == (3, tuned.num_prompt_rows + 7, VOCAB)
    assert relative(got.logits, want.logits) <= TOLERANCE
    assert abs(float((got.loss - want.loss).detach())) <= TOLERANCE * abs(float(want.loss.detach()))
    assert len(got.hidden_states) == len(want.hidden_states)
    for got_states, want_states in zip(got.hidden_states, want.hidden_states, strict=True):
        assert relative(got_states, want_states) <= TOLERANCE
    for got_layer, want_layer in zip(got.cache.layers, want.cache.layers, strict=True):
        assert relative(got_layer.keys, want_layer.keys) <= TOLERANCE
        assert relative(got_layer.values, want_layer.values) <= TOLERANCE
    for name, grad in want_grads.items():
        assert grad.norm() > 0, name
        assert relative(got_grads[name], grad) <= TOLERANCE, name


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_use_cache_false_returns_no_cache_and_the_same_loss(family):
    tuned = attach(decoder(family), CONFIGS["dept"], backend="torch")
    move_off_init(tuned)
    ids, mask, labels = padded_batch("left")
    want, want_grads = run(tuned, False, ids, mask, labels, use_cache=False)
    got, got_grads = run(tuned, True, ids, mask, labels, use_cache=False)
    assert got.cache is None and want.cache is None and "cache" not in got.keys()
    assert relative(got.logits, want.logits) <= TOLERANCE
    assert abs(float((got.loss - want.loss).detach())) <= TOLERANCE * abs(float(want.loss.detach()))
    for name, grad in want_grads.items():
        assert relative(got_grads[name], grad) <= TOLERANCE, name


@pytest.mark.parametrize(
    "family, dropout, mode, setting, shared",
    [
        ("gpt2", 0.1, "eval", None, True),  # eval: no dropout acts
        ("gpt2", 0.1, "train", None, False),  # dropout acts on the prompt rows, one mask per row
        ("gpt2", 0.0, "train", None, True),
        ("gpt2", 0.1, "train", True, True),  # forced: the prompt rows share one dropout mask
        ("gpt2", 0.0, "eval", False, False),
        ("llama", 0.0, "train", None, True),  # the LLaMA family's default: no dropout
        ("llama", 0.1, "train", None, False),  # functional attention dropout
        ("llama", 0.1, "eval", None, True),
    ],
)
def test_auto_mode_shares_the_prompt_only_where_no_dropout_acts(family, dropout, mode, setting, shared):
    tuned = attach(decoder(family, dropout), CONFIGS["prompt_tuning"], shared_prompt=setting).train(mode == "train")
    calls = batch_calls(tuned.base_model)
    ids, mask, _ = padded_batch("right")
    tuned(input_ids=ids, attention_mask=mask)
    assert calls == ([1, 3] if shared else [3])


@pytest.mark.parametrize(
    "setting, grad, calls_made",
    [
        (None, True, [1, 1, 3]),  # one row unshared, then the batch shared (prompt, input)
        (None, False, [1, 1, 3]),  # one row shared (prompt kept, input), then the batch from the kept prompt
        (True, True, [1, 1, 1, 3]),  # forced: shared both times, the prompt recomputed under grad
    ],
)
def test_auto_mode_runs_one_row_under_grad_unshared(setting, grad, calls_made, caplog):
    """One row: the prompt runs once either way, so under grad (no prompt cache) auto mode skips the shared pass's
    second model call; without grad the kept prompt pays off, and a forced pass runs as asked."""
    tuned = attach(decoder("llama"), CONFIGS["dept"], shared_prompt=setting).eval()
    calls = batch_calls(tuned.base_model)
    ids, mask, _ = padded_batch("left")
    with caplog.at_level(logging.DEBUG, logger=LOGGER), torch.set_grad_enabled(grad):
        tuned(input_ids=ids[:1], attention_mask=mask[:1])
        tuned(input_ids=ids, attention_mask=mask)
    assert calls == calls_made
    assert ("one row under grad" in caplog.text) is (setting is None and grad)


@pytest.mark.parametrize("family", ["bert-mlm", "t5"])
def test_encoders_and_t5_run_unshared_in_auto_mode(family, caplog):
    tuned = attach(tiny(family), CONFIGS["dept"])
    calls = batch_calls(tuned.base_model)
    ids = torch.randint(1, VOCAB, (2, 5))
    kwargs = {"decoder_input_ids": ids[:, :3]} if family == "t5" else {}
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        tuned(input_ids=ids, **kwargs)
    assert calls == [2]
    if family == "bert-mlm":  # T5 returns before the choice: its prompt is on the encoder side
        assert "not a decoder-only causal LM" in caplog.text


@pytest.mark.parametrize(
    "family, config, pattern",
    [
        ("bert-mlm", CONFIGS["dept"], "not a decoder-only causal LM"),
        ("bert", CONFIGS["prompt_tuning"], "not a decoder-only causal LM"),
        ("t5", CONFIGS["lamp"], "encoder-decoder model.*bidirectional"),
        ("gpt2", LPTConfig(layer=1, num_tokens=2, hidden_size=8), "LPT's prompt .* depends on the input"),
    ],
)
def test_forcing_the_shared_pass_where_it_cannot_be_exact_is_refused_and_leaves_the_model(family, config, pattern):
    model = decoder(family) if family == "gpt2" else tiny(family)
    state = ModelState.of(model)
    with pytest.raises(ValueError, match=f"shared_prompt=True: .*{pattern}"):
        attach(model, config, shared_prompt=True)
    state.assert_unchanged(model, "a refused shared_prompt=True")


def test_lpt_attaches_in_auto_mode_and_shared_prompt_must_be_a_bool_or_none():
    attach(decoder("gpt2"), LPTConfig(layer=1, num_tokens=2, hidden_size=8))  # auto: never shared, no error
    with pytest.raises(TypeError, match="shared_prompt must be None .*, got str"):
        attach(tiny("gpt2"), CONFIGS["dept"], shared_prompt="yes")


def test_a_call_the_shared_pass_does_not_cover_falls_back_and_says_why(caplog):
    """Attention weights: the prompt rows span fewer keys than the input's, so the call runs unshared, with the
    outputs of the unshared path."""
    tuned = attach(decoder("gpt2"), CONFIGS["ept"], shared_prompt=True)
    move_off_init(tuned)
    calls = batch_calls(tuned.base_model)
    ids, mask, _ = padded_batch("left")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        out = tuned(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert calls == [3] and "does not handle the arguments ['output_attentions']" in caplog.text
    tuned.shared_prompt = False
    assert torch.equal(out.logits, tuned(input_ids=ids, attention_mask=mask, output_attentions=True).logits)


def test_gradient_checkpointing_in_training_falls_back(caplog):
    """Checkpointed layers drop the KV cache the input tokens would read the prompt from."""
    tuned = attach(decoder("llama"), CONFIGS["dept"], shared_prompt=True)
    tuned.base_model.activation_checkpointing_enable()
    tuned.train()
    move_off_init(tuned)
    calls = batch_calls(tuned.base_model)
    ids, mask, labels = padded_batch("right")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        tuned(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert calls == [3] and "gradient checkpointing" in caplog.text


def test_a_sliding_window_of_one_key_falls_back(caplog):
    """transformers' sliding-window cache keeps the last ``window - 1`` keys as ``[-(window - 1):]``, which at a
    window of 1 keeps every key: the input tokens' mask would not fit the prompt's cache."""
    model = decoder("mistral")
    model.config.sliding_window = 1
    tuned = attach(model, CONFIGS["dept"], backend="torch")
    move_off_init(tuned)
    calls = batch_calls(tuned.base_model)
    ids, mask, labels = padded_batch("left")
    want, want_grads = run(tuned, False, ids, mask, labels)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        got, got_grads = run(tuned, None, ids, mask, labels)
    assert calls == [3, 3] and "sliding window of 1" in caplog.text
    assert torch.equal(got.logits, want.logits)
    for name, grad in want_grads.items():
        assert torch.equal(got_grads[name], grad), name


# The prompt cache (eval forward and generate reuse one prompt pass per adapter state)

GREEDY = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}


def shape_calls(model) -> list[tuple[int, int]]:
    """``(batch, length)`` of each call to ``model``'s forward from now on (embeddings or ids, whichever it got)."""
    calls = []

    def record(_, args, kwargs):
        given = kwargs.get("inputs_embeds")
        calls.append(tuple((kwargs["input_ids"] if given is None else given).shape[:2]))

    model.register_forward_pre_hook(record, with_kwargs=True)
    return calls


def eval_tuned(family: str, method: str):
    tuned = attach(decoder(family), CONFIGS[method], backend="torch").eval()
    torch.manual_seed(1)
    move_off_init(tuned)
    return tuned


def unshared_logits(tuned, ids, mask) -> torch.Tensor:
    tuned.shared_prompt = False
    with torch.no_grad():
        logits = tuned(input_ids=ids, attention_mask=mask).logits
    tuned.shared_prompt = None
    return logits


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_eval_forward_reuses_the_prompt_pass_and_equals_the_unshared_path(family, method, side):
    tuned = eval_tuned(family, method)
    ids, mask, _ = padded_batch(side)
    want = unshared_logits(tuned, ids, mask)
    calls = shape_calls(tuned.base_model)
    rows = tuned.num_prompt_rows
    with torch.no_grad():
        first = tuned(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        second = tuned(input_ids=ids[1:], attention_mask=mask[1:])
    assert calls == [(1, rows), (3, 7), (2, 7)]  # the prompt once, then only the input tokens
    assert tuned.prompt_cache.builds == 1
    assert relative(first.logits, want) <= TOLERANCE
    assert relative(second.logits, want[1:]) <= TOLERANCE
    assert len(first.hidden_states) == 3


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_from_the_cached_prompt_equals_the_unshared_path(family, method):
    """Left padding, rows of 3, 5 and 7 tokens; the prefill runs only the 7 input columns."""
    tuned = eval_tuned(family, method)
    ids, mask, _ = padded_batch("left")
    tuned.shared_prompt = False
    want = tuned.generate(ids, attention_mask=mask, **GREEDY)
    tuned.shared_prompt = None
    calls = shape_calls(tuned.base_model)
    got = tuned.generate(ids, attention_mask=mask, **GREEDY)
    again = tuned.generate(ids, attention_mask=mask, **GREEDY)
    assert torch.equal(got, want) and torch.equal(again, want)
    rows = tuned.num_prompt_rows
    decode = [(3, 1)] * (GREEDY["max_new_tokens"] - 1)
    assert calls == [(1, rows), (3, 7), *decode, (3, 7), *decode]
    assert tuned.prompt_cache.builds == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_expands_the_cached_prompt_to_beams_and_returned_sequences(family):
    tuned = eval_tuned(family, "ept")
    ids, mask, _ = padded_batch("left")
    settings = {**GREEDY, "num_beams": 3, "num_return_sequences": 2}
    tuned.shared_prompt = False
    want = tuned.generate(ids, attention_mask=mask, **settings)
    tuned.shared_prompt = None
    calls = shape_calls(tuned.base_model)
    assert torch.equal(tuned.generate(ids, attention_mask=mask, **settings), want)
    assert calls[:2] == [(1, tuned.num_prompt_rows), (9, 7)]


def assert_rebuilt(tuned, ids, mask, before: torch.Tensor) -> None:
    """The next eval forward computes the prompt again and equals the unshared path, which the change moved off
    ``before`` (so a stale prompt would fail)."""
    builds = tuned.prompt_cache.builds
    want = unshared_logits(tuned, ids, mask)
    assert relative(want, before) > 1e-3
    with torch.no_grad():
        got = tuned(input_ids=ids, attention_mask=mask).logits
    assert tuned.prompt_cache.builds == builds + 1
    assert relative(got, want) <= TOLERANCE


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_cache_is_rebuilt_after_an_optimizer_step(family):
    tuned = eval_tuned(family, "dept")
    ids, mask, labels = padded_batch("left")
    with torch.no_grad():
        before = tuned(input_ids=ids, attention_mask=mask).logits
    optimizer = torch.optim.Adam(tuned.adapter_state_dict().values(), lr=0.1)
    tuned(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    optimizer.step()
    assert_rebuilt(tuned, ids, mask, before)


@pytest.mark.parametrize("change", ["load_state_dict", "load_adapter", "data_copy", "new_parameter"])
def test_the_cache_is_rebuilt_after_loading_another_adapter(change, tmp_path):
    """``load_state_dict`` copies in place (a version bump); ``param.data.copy_`` bumps no version (the content
    check sees it); a replaced parameter is another tensor; ``load_adapter`` attaches a new tuned model."""
    tuned = eval_tuned("llama", "ept")
    ids, mask, _ = padded_batch("right")
    with torch.no_grad():
        before = tuned(input_ids=ids, attention_mask=mask).logits
        tuned(input_ids=ids, attention_mask=mask)
    assert tuned.prompt_cache.builds == 1
    other = eval_tuned("llama", "ept")
    move_off_init(other)
    if change == "load_state_dict":
        tuned.prompt_module.load_state_dict(other.prompt_module.state_dict())
    elif change == "data_copy":
        tuned.prompt_module.prompt.data.copy_(other.prompt_module.prompt)
    elif change == "new_parameter":
        tuned.prompt_module.prompt = torch.nn.Parameter(other.prompt_module.prompt.detach().clone())
    else:
        from prompt_ops.models import load_adapter

        other.save_adapter(tmp_path)
        tuned = load_adapter(tuned.unload(), tmp_path).eval()  # a new wrapper over the same base model
    assert_rebuilt(tuned, ids, mask, before)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_cache_is_rebuilt_when_autocast_is_turned_on_or_off(family):
    """A prompt pass kept under autocast holds bf16 keys and values: served outside it (or a plain one served under
    it) the logits would mix precisions and dtypes, unlike the unshared path's."""
    tuned = eval_tuned(family, "dept")
    ids, mask, _ = padded_batch("left")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tuned(input_ids=ids, attention_mask=mask)
        want = unshared_logits(tuned, ids, mask)
        got = tuned(input_ids=ids, attention_mask=mask).logits
    assert tuned.prompt_cache.builds == 1 and got.dtype == want.dtype == torch.bfloat16
    want = unshared_logits(tuned, ids, mask)
    with torch.no_grad():
        got = tuned(input_ids=ids, attention_mask=mask).logits
    assert tuned.prompt_cache.builds == 2 and got.dtype == want.dtype == torch.float32
    assert relative(got, want) <= TOLERANCE
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = tuned(input_ids=ids, attention_mask=mask).logits
    assert tuned.prompt_cache.builds == 3 and got.dtype == torch.bfloat16


def test_the_cache_is_never_used_under_grad_nor_while_dropout_acts():
    tuned = attach(decoder("gpt2", 0.1), CONFIGS["prompt_tuning"], shared_prompt=True).eval()
    ids, mask, _ = padded_batch("left")
    calls = shape_calls(tuned.base_model)
    tuned(input_ids=ids, attention_mask=mask)
    tuned(input_ids=ids, attention_mask=mask)
    tuned.train()
    with torch.no_grad():
        tuned(input_ids=ids, attention_mask=mask)
        tuned(input_ids=ids, attention_mask=mask)
    rows = tuned.num_prompt_rows
    assert calls == [(1, rows), (3, 7)] * 4
    assert tuned.prompt_cache.builds == 4


def test_generate_arguments_the_shared_prefill_does_not_cover_fall_back(caplog):
    tuned = eval_tuned("gpt2", "dept")
    ids, mask, _ = padded_batch("left")
    calls = shape_calls(tuned.base_model)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        got = tuned.generate(ids, attention_mask=mask, output_scores=False, **GREEDY)
    assert calls[0] == (3, tuned.num_prompt_rows + 7) and "generate arguments ['output_scores']" in caplog.text
    assert torch.equal(got, tuned.generate(ids, attention_mask=mask, **GREEDY))


@pytest.mark.parametrize("keep", [1, 7, 9, 100])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_logits_to_keep_keeps_the_last_rows_of_the_unshared_path(family, keep):
    """What generate's prefill asks for (``logits_to_keep=1``), up to more rows than the input (9: two prompt rows
    in front) and more than the whole prompted row (100: all of them)."""
    tuned = eval_tuned(family, "dept")
    ids, mask, _ = padded_batch("left")
    want = unshared_logits(tuned, ids, mask)[:, -keep:]
    calls = shape_calls(tuned.base_model)
    with torch.no_grad():
        got = tuned(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    assert calls == [(1, tuned.num_prompt_rows), (3, 7)]
    assert got.shape == want.shape
    assert relative(got, want) <= TOLERANCE


def test_logits_to_keep_the_shared_pass_does_not_cover_falls_back(caplog):
    """An index tensor, or a count with labels (the loss needs every row's logits): the unshared path answers,
    which for a count with labels is transformers' own refusal."""
    tuned = eval_tuned("gpt2", "dept")
    ids, mask, _ = padded_batch("left")
    calls = batch_calls(tuned.base_model)
    with caplog.at_level(logging.DEBUG, logger=LOGGER), torch.no_grad():
        tuned(input_ids=ids, attention_mask=mask, logits_to_keep=torch.tensor([2, 5]))
        with pytest.raises(ValueError, match="batch_size"):
            tuned(input_ids=ids, attention_mask=mask, labels=ids, logits_to_keep=1)
    assert calls == [3, 3]
    assert "logits_to_keep is not a count" in caplog.text and "logits_to_keep with labels" in caplog.text
