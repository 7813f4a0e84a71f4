"""attach() on tiny random Hugging Face models of each family, against a hand-written reference forward."""

import math
import warnings

import pytest
import torch

from prompt_ops.models import (
    ADePTConfig,
    DePTConfig,
    EPTConfig,
    LAMPConfig,
    LPTConfig,
    MethodConfig,
    PromptTunedModel,
    PromptTuningConfig,
    attach,
)
from prompt_ops.ops import reference
from tests.models.model_state import ModelState

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN = 64, 16
CONFIGS = {
    "prompt_tuning": PromptTuningConfig(num_tokens=4),
    "dept": DePTConfig(num_tokens=4, rank=3, max_length=12),
    "adept": ADePTConfig(num_tokens=4, rank=3),
    "lamp": LAMPConfig(num_tokens=6, rank=2, pool=2),
    "ept": EPTConfig(num_tokens=4, rank=3, max_length=12, num_subspaces=2, subspace_rank=2),
}


def tiny(family: str, initializer_range: float | None = None):
    """A tiny random model of ``family`` in eval mode (no dropout, so forwards compare exactly). A larger
    ``initializer_range`` than the configs' 0.02 (T5: ``initializer_factor`` 1.0, scaled alike) makes the outputs
    depend more on the positions."""
    model_class, config = _spec(family)
    if initializer_range is not None:
        config.initializer_range = initializer_range
        config.initializer_factor = initializer_range / 0.02
    torch.manual_seed(0)
    return model_class(config).eval()


def _spec(family: str):
    if family == "bert":
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64, num_labels=3,
        )  # fmt: skip
        return transformers.BertForSequenceClassification, config
    if family == "bert-mlm":
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64,
        )  # fmt: skip
        return transformers.BertForMaskedLM, config
    if family == "roberta":
        config = transformers.RobertaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=70, num_labels=3, pad_token_id=1,
        )  # fmt: skip
        return transformers.RobertaForSequenceClassification, config
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=2, n_positions=64)
        return transformers.GPT2LMHeadModel, config
    if family == "llama":
        config = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64,
        )  # fmt: skip
        return transformers.LlamaForCausalLM, config
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0
    )
    return transformers.T5ForConditionalGeneration, config


def move_off_init(tuned):
    """Give every adapter tensor a value, so that zero inits (offsets, projections) do not hide a path."""
    with torch.no_grad():
        for param in tuned.adapter_state_dict().values():
            param.add_(0.1 * torch.randn_like(param))


def reference_inputs(tuned, ids, mask):
    """The model input written out with ops/reference.py for a DePT adapter."""
    module = tuned.prompt_module
    return reference.dept_embed(
        ids, module.embedding.weight, module.prompt, module.lora_a, module.lora_b, module.scale, mask
    )


@pytest.mark.parametrize("family", ["bert", "bert-mlm", "roberta", "gpt2", "llama", "t5"])
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_every_method_trains_on_every_family(family, method):
    model = tiny(family)
    tuned = attach(model, CONFIGS[method])
    move_off_init(tuned)
    ids = torch.randint(1, VOCAB, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    kwargs = {"labels": torch.tensor([0, 2])} if family in ("bert", "roberta") else {"labels": ids.clone()}
    if family == "t5":
        kwargs = {"labels": torch.randint(1, VOCAB, (2, 5))}
    loss = tuned(input_ids=ids, attention_mask=mask, **kwargs).loss
    loss.backward()
    assert all(p.grad is None for p in model.parameters())  # the base model is frozen
    assert all(p.grad is not None for p in tuned.adapter_state_dict().values())
    assert "trainable params:" in tuned.trainable_parameters() and repr(tuned)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_only_matches_the_reference_forward(family):
    model = tiny(family)
    tuned = attach(model, DePTConfig(num_tokens=4, rank=3, max_length=12))
    move_off_init(tuned)
    ids, mask = torch.randint(1, VOCAB, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    out = tuned(input_ids=ids, attention_mask=mask, labels=ids)
    embeds, ext_mask = reference_inputs(tuned, ids, mask)
    labels = torch.cat([torch.full((2, 4), -100), ids], dim=1)  # -100 over the prompt
    expected = model(inputs_embeds=embeds, attention_mask=ext_mask, labels=labels)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-5, atol=1e-5)


def test_encoder_extends_token_type_ids_and_shifts_position_ids():
    """Segment ids get zeros over the prompt; the user's positions are honoured behind the prompt's 0..3."""
    model = tiny("bert-mlm")  # token-level logits: every position shows
    tuned = attach(model, DePTConfig(num_tokens=4, rank=3, max_length=12))
    move_off_init(tuned)
    ids, mask = torch.randint(1, VOCAB, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    token_types = torch.randint(0, 2, (2, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # honoured, not dropped with a warning
        out = tuned(
            input_ids=ids, attention_mask=mask, token_type_ids=token_types, position_ids=torch.arange(3, 10)[None]
        )
    embeds, ext_mask = reference_inputs(tuned, ids, mask)
    types = torch.cat([torch.zeros(2, 4, dtype=torch.long), token_types], dim=1)
    positions = torch.tensor([[0, 1, 2, 3, 7, 8, 9, 10, 11, 12, 13]])
    expected = model(inputs_embeds=embeds, attention_mask=ext_mask, token_type_ids=types, position_ids=positions)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-5)
    dropped = model(inputs_embeds=embeds, attention_mask=ext_mask, token_type_ids=types)
    assert (out.logits - dropped.logits).norm() > 0.1 * dropped.logits.norm()  # the positions matter here


def test_t5_prompt_goes_on_the_encoder_only():
    model = tiny("t5")
    tuned = attach(model, DePTConfig(num_tokens=4, rank=3, max_length=12))
    move_off_init(tuned)
    ids, mask = torch.randint(1, VOCAB, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    labels = torch.randint(1, VOCAB, (2, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no position_ids warning path for T5
        out = tuned(input_ids=ids, attention_mask=mask, labels=labels)
    embeds, ext_mask = reference_inputs(tuned, ids, mask)
    expected = model(inputs_embeds=embeds, attention_mask=ext_mask, labels=labels)  # labels untouched
    assert out.logits.shape == (2, 5, VOCAB)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-5, atol=1e-5)
    decoder_ids = torch.randint(1, VOCAB, (2, 3))
    out = tuned(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
    expected = model(inputs_embeds=embeds, attention_mask=ext_mask, decoder_input_ids=decoder_ids)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(
        ValueError, match="T5ForConditionalGeneration is an encoder-decoder model: pass decoder_input_ids"
    ):
        tuned(input_ids=ids, attention_mask=mask)


def test_bad_arguments():
    with pytest.raises(TypeError, match="config must be a prompt_ops.models config"):
        attach(tiny("gpt2"), {"num_tokens": 4})
    with pytest.raises(TypeError, match="Hugging Face PreTrainedModel"):
        attach(torch.nn.Linear(2, 2), DePTConfig())
    tuned = attach(tiny("gpt2"), PromptTuningConfig(num_tokens=2))
    with pytest.raises(ValueError, match="needs input_ids"):
        tuned(inputs_embeds=torch.randn(1, 3, HIDDEN))


def test_a_model_without_an_input_embedding_is_refused_by_name():
    """transformers' default ``get_input_embeddings`` raises NotImplementedError: a TypeError names the model."""

    class NoEmbedding(torch.nn.Module):
        def get_input_embeddings(self):
            raise NotImplementedError

    with pytest.raises(TypeError, match=r"model \(NoEmbedding\) has no input embedding"):
        attach(NoEmbedding(), DePTConfig())


# ------------------------------------------------------------------------------------------------------------------
# Refused calls leave the model as it was (regressions of the bad-input campaign)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, backend, error, pattern",
    [
        (DePTConfig(rank=0), None, ValueError, "rank must be >= 1"),
        (DePTConfig(num_tokens=2, init_token_ids=[VOCAB]), None, ValueError, r"init_token_ids must be in \[0, 64\)"),
        (DePTConfig(num_tokens=2, init_token_ids=[1.7]), None, TypeError, "init_token_ids must be .* float"),
        (DePTConfig(num_tokens=2, lora_alpha=math.inf), None, ValueError, "lora_alpha must be a positive number"),
        (ADePTConfig(num_tokens=2, dropout=1.0), None, ValueError, r"dropout must be a float in \[0, 1\)"),
        (LAMPConfig(num_tokens=5, pool=2), None, ValueError, "pool = 2 must divide num_tokens = 5"),
        (EPTConfig(num_tokens=2, max_length=2**40), None, ValueError, "lora_a .*lower max_length or rank"),
        (PromptTuningConfig(num_tokens=2**40), None, ValueError, r"prompt \(num_tokens=1099511627776"),
        (PromptTuningConfig(num_tokens="4"), None, TypeError, "num_tokens must be an int, got str"),
        (PromptTuningConfig(num_tokens=2), "cuda", ValueError, "backend must be one of"),
    ],
)
def test_a_refused_attach_leaves_the_model_as_it_was(config, backend, error, pattern):
    model = tiny("gpt2")
    before = ModelState.of(model)
    with pytest.raises(error, match=pattern):
        attach(model, config, backend=backend)
    before.assert_unchanged(model)
    assert all(p.requires_grad for p in model.parameters())


def test_config_must_be_an_instance_of_a_method_config():
    model = tiny("gpt2")
    with pytest.raises(TypeError, match="config must be .*got the class DePTConfig \\(pass an instance\\)"):
        attach(model, DePTConfig)
    with pytest.raises(TypeError, match="config must be .*got MethodConfig"):
        attach(model, MethodConfig())
    with pytest.raises(TypeError, match=r"config must be .*or EPTConfig\), got LPTConfig"):
        PromptTunedModel(model, LPTConfig())
    with pytest.raises(TypeError, match="model must be a Hugging Face PreTrainedModel .*got str"):
        attach("gpt2", DePTConfig())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "family, argument, value, pattern",
    [
        ("bert", "token_type_ids", torch.zeros(2, 3, dtype=torch.long), r"token_type_ids must have the shape of input"),
        ("bert", "token_type_ids", torch.zeros(2, 7), r"token_type_ids must be an integer tensor"),
        ("bert", "position_ids", torch.arange(5)[None], r"position_ids must have shape \(2, 7\) or \(1, 7\)"),
        ("gpt2", "position_ids", torch.arange(56, 63)[None], r"position_ids must be in \[0, 62\) .*wpe.*from 56 to 62"),
        ("roberta", "position_ids", torch.arange(1, 8)[None], r"position_ids must be in \[2, 68\) .*from 1 to 7"),
        ("gpt2", "position_ids", torch.arange(7)[None] - 1, r"position_ids must be in \[0, 62\)"),
        ("t5", "position_ids", torch.arange(7)[None], "position_ids: T5ForConditionalGeneration's forward takes no"),
        ("bert", "labels", torch.tensor([0, 1, 2]), r"labels must have shape \(2,\) or, floating, \(2, num_labels\)"),
        (
            "gpt2",
            "labels",
            torch.zeros(2, 4, dtype=torch.long),
            r"labels must have shape \(2, 7\), the shape of input_ids.*\(2, 4\)",
        ),
        ("gpt2", "labels", [[1, 2]], "labels must be a torch.Tensor, got list"),
        ("gpt2", "attention_mask", torch.ones(2, 6), r"attention_mask must have .*got \(2, 6\)"),
        ("gpt2", "input_ids", torch.zeros(2, 7), r"input_ids must be an integer tensor of shape \(B, L\)"),
    ],
)
def test_wrapper_checks_input_shapes_against_input_ids(family, argument, value, pattern):
    tuned = attach(tiny(family), DePTConfig(num_tokens=2, rank=2, max_length=12))
    inputs = {"input_ids": torch.randint(1, VOCAB, (2, 7)), argument: value}
    before = ModelState.of(tuned)
    with pytest.raises((ValueError, TypeError), match=pattern):
        tuned(**inputs)
    before.assert_unchanged(tuned)


def test_multi_label_float_labels_pass_through():
    model = tiny("bert")
    model.config.problem_type = "multi_label_classification"
    tuned = attach(model, PromptTuningConfig(num_tokens=2))
    out = tuned(input_ids=torch.randint(1, VOCAB, (2, 7)), labels=torch.ones(2, 3))
    assert out.loss.isfinite()


class _Boom(RuntimeError):
    pass


def _raise(*_):
    raise _Boom("a layer failed")


@pytest.mark.parametrize("where", ["prefill", "decoding"])
def test_generate_puts_the_input_embedding_back_whatever_fails(where):
    """An exception inside the base model's generate (here from a layer, at the first or a later step) leaves the
    input embedding, the hooks and the grad mode as they were."""
    tuned = attach(tiny("gpt2"), DePTConfig(num_tokens=2, rank=2, max_length=12)).eval()
    calls = []

    def fail(module, args, output):
        calls.append(1)
        if where == "prefill" or len(calls) > 1:
            _raise()

    before = ModelState.of(tuned)
    handle = tuned.base_model.transformer.h[0].register_forward_hook(fail)
    with pytest.raises(_Boom):
        tuned.generate(torch.randint(1, VOCAB, (1, 4)), max_new_tokens=3, pad_token_id=0, eos_token_id=None)
    handle.remove()
    before.assert_unchanged(tuned)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"max_new_tokens": "3"}, TypeError, "max_new_tokens must be an int >= 1 or None, got str"),
        ({"max_length": 2.5}, TypeError, "max_length must be an int >= 1 or None, got float"),
        ({"max_new_tokens": -1}, ValueError, "max_new_tokens must be an int >= 1 or None, got -1"),
        ({"num_beams": 0}, ValueError, "num_beams must be an int >= 1 or None, got 0"),  # transformers divided by 0
        ({"do_sample": True, "top_p": 2.0}, ValueError, r"top_p must be a number in \(0, 1\]"),
        ({"max_new_tokens": 2**62}, ValueError, r"max_new_tokens = 4611686018427387904 .* position embeddings"),
        ({"max_new_tokens": 2, "colour": 3}, ValueError, "colour"),
        ({"inputs_embeds": torch.zeros(1, 4, HIDDEN)}, ValueError, "do not pass inputs_embeds"),
        (  # positions 59..62 past the two prompt rows read the last row of the 64; a fifth would overrun
            {"position_ids": torch.arange(55, 59)[None], "max_new_tokens": 5},
            ValueError,
            r"position_ids must be in \[0, 62\) .* they and 4 generated after the last stay inside .*from 55 to 62",
        ),
        ({"position_ids": torch.arange(3)[None]}, ValueError, r"position_ids must have shape \(1, 4\)"),
        (  # transformers said "max_length is set to -1" about an input length of 0
            {"max_length": 6},
            ValueError,
            r"max_length counts the 2 prompt rows and input_ids' 4 tokens, so it must be above 6 .*, got 6",
        ),
    ],
)
def test_generate_refuses_bad_arguments_and_restores_the_embedding(kwargs, error, pattern):
    tuned = attach(tiny("gpt2"), PromptTuningConfig(num_tokens=2)).eval()
    before = ModelState.of(tuned)
    with pytest.raises(error, match=pattern):
        tuned.generate(torch.randint(1, VOCAB, (1, 4)), pad_token_id=0, **kwargs)
    before.assert_unchanged(tuned)


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("length", ["max_new_tokens", "max_length"])
def test_generation_longer_than_memory_holds_is_refused_without_a_position_table(family, length):
    """Rotary (LLaMA) and relative (T5) positions set no length limit: 2**62 new tokens would generate until memory
    runs out. Their hidden states alone exceed any device, so the call is refused naming the argument, and the model
    is left as it was (LPT: tests/models/test_lpt.py)."""
    tuned = attach(tiny(family), PromptTuningConfig(num_tokens=2)).eval()
    before = ModelState.of(tuned)
    with pytest.raises(ValueError, match=rf"{length} = {2**62} asks for .* more than the \d+ bytes of memory"):
        tuned.generate(torch.randint(1, VOCAB, (2, 4)), pad_token_id=0, **{length: 2**62})
    before.assert_unchanged(tuned)


def test_inputs_longer_than_the_position_table_with_the_prompt_are_refused_by_name():
    """GPT-2's learned positions number 64: 60 tokens fit the model, not after 5 prompt rows (an IndexError inside
    torch before)."""
    tuned = attach(tiny("gpt2"), PromptTuningConfig(num_tokens=5)).eval()
    before = ModelState.of(tuned)
    ids = torch.randint(1, VOCAB, (1, 60))
    with pytest.raises(ValueError, match=r"the 5 prompt rows and input_ids' 60 tokens make 65 positions, .* 64"):
        tuned(input_ids=ids)
    with pytest.raises(ValueError, match=r"5 prompt rows, input_ids' 58 tokens and max_new_tokens = 3 .* 65"):
        tuned.generate(ids[:, :58], max_new_tokens=3, pad_token_id=0)
    before.assert_unchanged(tuned)
    assert tuned.generate(ids[:, :58], max_new_tokens=2, pad_token_id=0).shape == (1, 60)  # the last is not read back


def test_generation_lengths_set_by_max_length_or_by_default_are_checked_against_the_position_table():
    """``max_length`` counts the prompt rows and the input (transformers' rule for ``inputs_embeds``), and without
    any length ``generate`` appends 20 tokens: both ran past GPT-2's 64 positions into an IndexError inside torch,
    with and without user ``position_ids``, where only ``max_new_tokens`` was checked."""
    tuned = attach(tiny("gpt2"), PromptTuningConfig(num_tokens=5)).eval()
    before = ModelState.of(tuned)
    ids = torch.randint(1, VOCAB, (1, 58))
    with pytest.raises(ValueError, match=r"5 prompt rows, input_ids' 58 tokens and max_length = 66 .* 65 positions"):
        tuned.generate(ids, max_length=66, pad_token_id=0)
    with pytest.raises(ValueError, match=r"58 tokens and transformers' default of 20 new tokens .* 82 positions"):
        tuned.generate(ids, pad_token_id=0)
    with pytest.raises(ValueError, match=r"position_ids must be in \[0, 59\) .* and 9 generated after the last"):
        tuned.generate(ids[:, :4], position_ids=torch.arange(50, 54)[None], max_length=19, pad_token_id=0)
    before.assert_unchanged(tuned)
    assert tuned.generate(ids, max_length=65, pad_token_id=0).shape == (1, 60)  # the last is not read back
    assert tuned.generate(ids[:, :4], pad_token_id=0, eos_token_id=None).shape == (1, 24)


def test_an_unloaded_wrapper_refuses_to_run_instead_of_running_the_bare_model():
    model = tiny("gpt2")
    tuned = attach(model, PromptTuningConfig(num_tokens=2))
    assert tuned.unload() is model and tuned.unload() is model
    ids = torch.randint(1, VOCAB, (1, 4))
    with pytest.raises(ValueError, match="was unloaded"):
        tuned(input_ids=ids)
    with pytest.raises(ValueError, match="was unloaded"):
        tuned.generate(ids, max_new_tokens=1, pad_token_id=0)


@pytest.mark.parametrize(
    "family, labels, pattern",
    [
        ("bert", torch.zeros(2, 7), r"\(2,\) or, floating, \(2, num_labels\) = \(2, 3\)"),  # not 7 labels
        ("t5", "x", "labels must be a torch.Tensor, got str"),
        ("t5", torch.zeros(3, 2, dtype=torch.long), r"decoder's integer targets of shape \(2, T\)"),
    ],
)
def test_labels_the_head_cannot_take_are_refused_by_name(family, labels, pattern):
    """Before: transformers' "Expected input batch_size (2) to match target batch_size (14)", T5's AttributeError
    or a size mismatch inside attention."""
    tuned = attach(tiny(family), PromptTuningConfig(num_tokens=2))
    before = ModelState.of(tuned)
    with pytest.raises((ValueError, TypeError), match=pattern):
        tuned(input_ids=torch.randint(1, VOCAB, (2, 7)), labels=labels)
    before.assert_unchanged(tuned)
