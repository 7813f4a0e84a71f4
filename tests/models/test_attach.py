"""attach() on tiny random Hugging Face models of each family, against a hand-written reference forward."""

import warnings

import pytest
import torch

from prompt_ops.models import ADePTConfig, DePTConfig, EPTConfig, LAMPConfig, PromptTuningConfig, attach
from prompt_ops.ops import reference

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN = 64, 16
CONFIGS = {
    "prompt_tuning": PromptTuningConfig(num_tokens=4),
    "dept": DePTConfig(num_tokens=4, rank=3, max_length=12),
    "adept": ADePTConfig(num_tokens=4, rank=3),
    "lamp": LAMPConfig(num_tokens=6, rank=2, pool=2),
    "ept": EPTConfig(num_tokens=4, rank=3, max_length=12, num_subspaces=2, subspace_rank=2),
}


def tiny(family: str):
    """A tiny random model of ``family`` in eval mode (no dropout, so forwards compare exactly)."""
    return _build(family).eval()


def _build(family: str):
    torch.manual_seed(0)
    if family == "bert":
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64, num_labels=3,
        )  # fmt: skip
        return transformers.BertForSequenceClassification(config)
    if family == "bert-mlm":
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64,
        )  # fmt: skip
        return transformers.BertForMaskedLM(config)
    if family == "roberta":
        config = transformers.RobertaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=70, num_labels=3, pad_token_id=1,
        )  # fmt: skip
        return transformers.RobertaForSequenceClassification(config)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=2, n_positions=64)
        return transformers.GPT2LMHeadModel(config)
    if family == "llama":
        config = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(config)
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0
    )
    return transformers.T5ForConditionalGeneration(config)


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


def test_encoder_extends_token_type_ids_and_drops_position_ids():
    model = tiny("bert")
    tuned = attach(model, DePTConfig(num_tokens=4, rank=3, max_length=12))
    move_off_init(tuned)
    ids, mask = torch.randint(1, VOCAB, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    token_types = torch.randint(0, 2, (2, 7))
    with pytest.warns(UserWarning, match="position_ids are dropped"):
        out = tuned(input_ids=ids, attention_mask=mask, token_type_ids=token_types, position_ids=torch.arange(7)[None])
    embeds, ext_mask = reference_inputs(tuned, ids, mask)
    types = torch.cat([torch.zeros(2, 4, dtype=torch.long), token_types], dim=1)
    expected = model(inputs_embeds=embeds, attention_mask=ext_mask, token_type_ids=types)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-5)


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


def test_bad_arguments():
    with pytest.raises(TypeError, match="config must be a prompt_ops.models config"):
        attach(tiny("gpt2"), {"num_tokens": 4})
    with pytest.raises(TypeError, match="Hugging Face PreTrainedModel"):
        attach(torch.nn.Linear(2, 2), DePTConfig())
    tuned = attach(tiny("gpt2"), PromptTuningConfig(num_tokens=2))
    with pytest.raises(ValueError, match="needs input_ids"):
        tuned(inputs_embeds=torch.randn(1, 3, HIDDEN))
