"""LPT attached inside tiny random models of each family, against a reference forward that loops over the layers
and concatenates (the official code's way), written here independently of the hooks."""

import copy
import json
import warnings

import pytest
import torch

from prompt_ops.models import LatePromptTunedModel, LPTConfig, attach, load_adapter
from prompt_ops.models.late import source_from_labels
from prompt_ops.models.stacks import find_stack
from prompt_ops.ops import reference
from prompt_ops.ops.lpt import MODES
from tests.helpers import assert_grads_close
from tests.models.model_state import ModelState

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN, LAYERS = 64, 16, 4
FAMILIES = ["bert", "roberta", "gpt2", "llama", "t5"]


def tiny(family: str, attention: str = "sdpa", head: bool = False, dtype=torch.float32):
    """A tiny random 4-layer model of ``family`` in eval mode: the bare stack, or with its usual head."""
    torch.manual_seed(0)
    common = {"vocab_size": VOCAB, "attn_implementation": attention}
    if family in ("bert", "roberta"):
        cls = transformers.BertConfig if family == "bert" else transformers.RobertaConfig
        config = cls(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=70, num_labels=3, **common)  # fmt: skip
        model_cls = {
            ("bert", False): transformers.BertModel,
            ("bert", True): transformers.BertForSequenceClassification,
            ("roberta", False): transformers.RobertaModel,
            ("roberta", True): transformers.RobertaForMaskedLM,
        }[family, head]
    elif family == "gpt2":
        config = transformers.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=64, **common)
        model_cls = transformers.GPT2LMHeadModel if head else transformers.GPT2Model
    elif family == "llama":
        config = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=LAYERS,
                                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                          **common)  # fmt: skip
        model_cls = transformers.LlamaForCausalLM if head else transformers.LlamaModel
    else:
        config = transformers.T5Config(d_model=HIDDEN, d_kv=8, d_ff=32, num_layers=LAYERS, num_heads=2,
                                       decoder_start_token_id=0, **common)  # fmt: skip
        model_cls = transformers.T5ForConditionalGeneration if head else transformers.T5EncoderModel
    return model_cls(config).to(dtype).eval()


def inputs(batch=3, seq_len=9, padded=True):
    torch.manual_seed(1)
    ids = torch.randint(2, VOCAB, (batch, seq_len))
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    if padded:
        mask[1, seq_len - 3 :] = 0  # right padding: ragged lengths
        mask[2, seq_len - 1 :] = 0
    return ids, mask


def _bidirectional(keep, dtype):
    return (1.0 - keep[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _causal(keep, dtype):
    total = keep.shape[1]
    allowed = torch.tril(torch.ones(total, total, dtype=torch.bool)) & keep.bool()[:, None, None, :]
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)


def token_positions(mask):
    """The rule, written out: column ``t`` of a row with ``f`` leading pads is at ``t - f`` (leading pads at 0)."""
    leading = (mask.cumsum(1) == 0).sum(1)
    return (torch.arange(mask.shape[1])[None, :] - leading[:, None]).clamp(min=0)


def reference_stack(model, family, generator, layer, ids, mask, read, source_lengths=None):
    """Embeddings and layers ``1..k`` under no_grad, ``cat(P, H_k)``, layers ``k+1..N`` on ``n + L`` rows (the
    prompt at positions ``0..n-1``, each row's tokens at their own positions shifted by ``n``), the prompt rows
    dropped, then the stack's final norm. NPG ``read="last"`` reads the last source token (the last real one when
    ``source_lengths`` is None); the pooling modes pool the source."""
    n = generator.num_tokens
    positions = token_positions(mask)  # (B, L)
    upper = torch.cat([torch.arange(n).expand(ids.shape[0], n), positions + n], dim=1)  # (B, n + L)
    if family in ("bert", "roberta"):
        base = model.base_model
        first = base.embeddings.padding_idx + 1 if family == "roberta" else 0
        layers, final = base.encoder.layer, lambda h: h

        def embed():
            return base.embeddings(input_ids=ids, position_ids=positions + first)

        def run(block, h, keep, positions):
            return block(h, _bidirectional(keep, h.dtype))
    elif family == "gpt2":
        base = model.base_model
        layers, final = base.h, base.ln_f

        def embed():
            return base.drop(base.wte(ids) + base.wpe(positions))

        def run(block, h, keep, positions):
            return block(h, None, _causal(keep, h.dtype))
    elif family == "llama":
        base = model.base_model
        layers, embed, final = base.layers, lambda: base.embed_tokens(ids), base.norm

        def run(block, h, keep, positions):
            cos_sin = base.rotary_emb(h, positions)
            return block(h, attention_mask=_causal(keep, h.dtype), position_embeddings=cos_sin)
    else:
        encoder = model.get_encoder()
        layers, embed = encoder.block, lambda: encoder.dropout(encoder.embed_tokens(ids))
        relative = encoder.block[0].layer[0].SelfAttention

        def final(h):
            return encoder.dropout(encoder.final_layer_norm(h))

        def run(block, h, keep, positions):
            if positions is None:  # below k: the padded columns, as T5 numbers them
                bias = relative.compute_bias(keep.shape[1], keep.shape[1])
            else:  # the bias between every pair of positions, picked per row
                table = relative.compute_bias(int(positions.max()) + 1, int(positions.max()) + 1)[0]  # (H, M, M)
                bias = torch.stack([table[:, row[:, None], row[None, :]] for row in positions])
            return block(h, _bidirectional(keep, h.dtype), bias)[0]

    with torch.no_grad():
        hidden = embed()
        for block in layers[:layer]:
            hidden = run(block, hidden, mask, None if family == "t5" else positions)
    index = None
    if read == "last":
        valid = [row.nonzero().flatten() for row in mask]
        lengths = [len(v) for v in valid] if source_lengths is None else source_lengths.tolist()
        index = torch.tensor([int(v[length - 1]) for v, length in zip(valid, lengths, strict=True)])
    params = (generator.w_down, generator.b_down, generator.w_up, generator.b_up)
    prompt = reference.lpt_prompt(
        hidden.float(), *params, n, index, mask, generator.mode, source_lengths=source_lengths
    )
    hidden, keep = reference.lpt_insert(prompt, hidden, mask)
    for block in layers[layer:]:
        hidden = run(block, hidden, keep, upper)
    return final(hidden[:, n:])


def inputs_left(batch=3, seq_len=9):
    """:func:`inputs` with the padding moved to the left."""
    ids, mask = inputs(batch, seq_len)
    lengths = mask.sum(1)
    order = (torch.arange(seq_len)[None, :] + lengths[:, None]) % seq_len  # rotate each row's pads to the front
    return ids.gather(1, order), mask.gather(1, order)


GENERATORS = [("naive", "first"), ("naive", "last"), *((mode, None) for mode in MODES if mode != "naive")]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attention, padding", [("eager", "right"), ("sdpa", "right"), ("sdpa", "left")])
@pytest.mark.parametrize("mode, read", GENERATORS)
def test_attached_model_matches_the_loop_and_concat_reference(family, attention, padding, mode, read):
    """Right padding is the official setting; left padding numbers each row's tokens from its first real one."""
    model = tiny(family, attention)
    plain = copy.deepcopy(model)  # the reference runs on a copy without hooks
    tuned = attach(model, LPTConfig(layer=2, num_tokens=3, hidden_size=8, mode=mode, read=read), backend="torch")
    ids, mask = inputs() if padding == "right" else inputs_left()
    out = tuned(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = reference_stack(plain, family, tuned.prompt_module, 2, ids, mask, tuned.config.read)
    assert out.shape == (3, 9, HIDDEN)
    real = mask.bool()  # a leading pad attends nothing below k, which each implementation resolves its own way
    torch.testing.assert_close(out[real], expected[real], rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out) * real[..., None]
    params = list(tuned.prompt_module.parameters())
    got_grads, want_grads = torch.autograd.grad(out, params, grad), torch.autograd.grad(expected, params, grad)
    assert_grads_close(got_grads, want_grads, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_triton_backend_matches_torch_backend(family):
    ids, mask = inputs()
    outs, grads = [], []
    for backend in ("torch", "triton"):
        tuned = attach(tiny(family), LPTConfig(layer=1, num_tokens=2, hidden_size=8, mode="pool"), backend=backend)
        torch.manual_seed(3)
        for param in tuned.prompt_module.parameters():  # the same generator on both backends
            param.data = torch.randn_like(param) * 0.3
        out = tuned(input_ids=ids, attention_mask=mask).last_hidden_state
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), list(tuned.prompt_module.parameters())))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert_grads_close(*grads, rtol=1e-4, atol=1e-5)


def test_bfloat16_model_gets_the_prompt_in_its_dtype():
    model = tiny("llama", dtype=torch.bfloat16)
    plain = copy.deepcopy(model)
    tuned = attach(model, LPTConfig(layer=2, num_tokens=3, hidden_size=8), backend="triton")
    ids, mask = inputs()
    out = tuned(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = reference_stack(plain, "llama", tuned.prompt_module, 2, ids, mask, "last")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_below_layer_k_takes_part_in_backward(family):
    """Layers 1..k run with gradients off and give outputs outside the graph; layers above k are in the graph;
    after backward only the generator holds gradients."""
    model = tiny(family, head=True)
    seen = []  # (layer, grad mode inside it, its own output requires grad); hooked before LPT's hooks
    for position, block in enumerate(find_stack(model).layers):
        block.register_forward_hook(
            lambda module, args, output, position=position: seen.append(
                (position, torch.is_grad_enabled(), (output[0] if isinstance(output, tuple) else output).requires_grad)
            )
        )
    tuned = attach(model, LPTConfig(layer=2, num_tokens=3, hidden_size=8)).train()
    ids, mask = inputs()
    kwargs = {"labels": torch.randint(1, VOCAB, (3, 4))} if family == "t5" else {}
    out = tuned(input_ids=ids, attention_mask=mask, **kwargs)
    loss = out.loss if family == "t5" else out.logits.square().mean()
    loss.backward()
    assert [(p, g, r) for p, g, r in seen if p < 2] == [(0, False, False), (1, False, False)]
    assert all(grad_on and requires for p, grad_on, requires in seen if p >= 2) and len(seen) == LAYERS
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tuned.prompt_module.parameters())
    assert torch.is_grad_enabled()  # the caller's grad mode is back


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_generation_longer_than_memory_holds_is_refused(family):
    """No position table bounds rotary or relative positions: 2**62 new tokens are refused by name (they would
    generate until memory ran out), and the model is left as it was."""
    tuned = attach(tiny(family, head=True), LPTConfig(layer=1, num_tokens=2, hidden_size=4)).eval()
    ids, mask = inputs()
    before = ModelState.of(tuned)
    with pytest.raises(ValueError, match=rf"max_new_tokens = {2**62} asks for .* more than the \d+ bytes of memory"):
        tuned.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2**62, pad_token_id=0)
    before.assert_unchanged(tuned)


def test_t5_generation_matches_full_recomputation():
    tuned = attach(tiny("t5", head=True), LPTConfig(layer=2, num_tokens=3, hidden_size=8)).eval()
    ids, mask = inputs()
    generated = tuned.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    decoded = torch.zeros(3, 1, dtype=torch.long)  # decoder_start_token_id
    with torch.no_grad():
        for _ in range(4):
            logits = tuned(input_ids=ids, attention_mask=mask, decoder_input_ids=decoded).logits[:, -1]
            decoded = torch.cat([decoded, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, decoded)


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_heads_and_labels_work_unchanged(family):
    """Outputs keep the input's length, so sequence labels, masked-LM and causal-LM labels need no padding."""
    model = tiny(family, head=True)
    tuned = attach(model, LPTConfig(num_tokens=3, hidden_size=8))
    ids, mask = inputs()
    labels = torch.tensor([0, 2, 1]) if family == "bert" else ids.clone()
    if family == "gpt2":
        labels[:, :4] = -100  # a causal LM's source (the prompt is computed from it)
    out = tuned(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape[:2] == ((3, 3) if family == "bert" else (3, 9)) and out.loss.isfinite()
    assert tuned.config.layer == LAYERS // 2 and repr(tuned)


def test_llama_position_ids_shapes_agree():
    """Explicit positions as (1, L) or (B, L) give what the default numbering gives (the prompt's rotary positions
    follow the input's row count)."""
    tuned = attach(tiny("llama"), LPTConfig(layer=2, num_tokens=3, hidden_size=8))
    ids, mask = inputs(padded=False)
    default = tuned(input_ids=ids, attention_mask=mask).last_hidden_state
    for positions in (torch.arange(9)[None], torch.arange(9).expand(3, 9)):
        out = tuned(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        torch.testing.assert_close(out, default, rtol=1e-6, atol=1e-6)


def test_adapter_round_trip(tmp_path):
    model = tiny("gpt2", head=True)
    tuned = attach(model, LPTConfig(num_tokens=3, hidden_size=8, mode="pool"))
    tuned.save_adapter(tmp_path)
    assert '"layer": 2' in (tmp_path / "adapter_config.json").read_text()  # the resolved layer is saved
    ids, mask = inputs()
    expected = tuned(input_ids=ids, attention_mask=mask).logits
    fresh = tiny("gpt2", head=True)
    loaded = load_adapter(fresh, tmp_path)
    assert isinstance(loaded, LatePromptTunedModel) and loaded.config == tuned.config
    assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, expected)
    plain = loaded.unload()(input_ids=ids, attention_mask=mask).logits  # hooks removed: the base model again
    assert torch.equal(plain, tiny("gpt2", head=True)(input_ids=ids, attention_mask=mask).logits)


def test_bad_input():
    for layer in (0, LAYERS, 2.0):
        with pytest.raises(ValueError, match=r"layer must be an int in \[1, 3\] for a model with 4 layers"):
            attach(tiny("bert"), LPTConfig(layer=layer))
    with pytest.raises(ValueError, match="num_tokens must be >= 1"):
        attach(tiny("bert"), LPTConfig(num_tokens=0))
    with pytest.raises(ValueError, match="mode must be one of"):
        attach(tiny("bert"), LPTConfig(mode="mean"))
    with pytest.raises(ValueError, match="read must be 'first', 'last' or None"):
        attach(tiny("bert"), LPTConfig(read="middle"))
    for positions in ("token", None):  # LPT's module takes no positions: the config is what is checked
        model = tiny("gpt2")
        before = ModelState.of(model)
        with pytest.raises(ValueError, match=r"positions must be one of \('tokens', 'absolute'\)"):
            attach(model, LPTConfig(positions=positions))
        before.assert_unchanged(model)
    distil = transformers.DistilBertModel(
        transformers.DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=2, n_heads=2, hidden_dim=32)
    )
    with pytest.raises(TypeError, match="LPT supports the model families"):
        attach(distil, LPTConfig())
    flex = tiny("llama")
    flex.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="attn_implementation"):
        attach(flex, LPTConfig())
    checkpointed = tiny("gpt2", head=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # renamed activation_checkpointing_enable in v5
        checkpointed.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        attach(checkpointed, LPTConfig())
    tuned = attach(tiny("bert"), LPTConfig(mode="pool", num_tokens=2, hidden_size=8))
    ids, mask = inputs()
    with pytest.raises(ValueError, match="2-D attention_mask"):
        tuned(input_ids=ids, attention_mask=mask[:, None, None, :])
    holes = mask.clone()
    holes[0, 4] = 0
    with pytest.raises(ValueError, match="one contiguous block of valid rows"):
        tuned(input_ids=ids, attention_mask=holes)
    assert torch.is_grad_enabled()  # an error inside the stack leaves the grad mode as it was


# ------------------------------------------------------------------------------------------------------------------
# Regressions of the bad-input campaign: refused calls and failures anywhere in a pass leave the model, its hooks
# and torch's grad mode as they were
# ------------------------------------------------------------------------------------------------------------------


def test_a_second_attach_is_refused_and_the_first_keeps_working():
    model = tiny("gpt2", head=True)
    tuned = attach(model, LPTConfig(layer=2, num_tokens=3, hidden_size=8))
    ids, mask = inputs()
    expected = tuned(input_ids=ids, attention_mask=mask).logits
    before = ModelState.of(model)
    with pytest.raises(ValueError, match="model already has an LPT attached .*call unload\\(\\) on it first"):
        attach(model, LPTConfig(layer=1, num_tokens=2, hidden_size=8))
    before.assert_unchanged(model)
    assert torch.equal(tuned(input_ids=ids, attention_mask=mask).logits, expected)
    again = attach(tuned.unload(), LPTConfig(layer=1, num_tokens=2, hidden_size=8))  # after unload: allowed
    assert again(input_ids=ids, attention_mask=mask).logits.shape == expected.shape


def test_a_one_layer_model_is_refused_by_name():
    model = transformers.GPT2Model(transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="LPT needs a model with at least 2 layers .* the model has 1$"):
        attach(model, LPTConfig())
    assert all(p.requires_grad for p in model.parameters())


class _Boom(RuntimeError):
    pass


def _boom(*_, **__):
    raise _Boom("failed inside the model")


def _failure(tuned, stage: str):
    """Make one stage of a pass raise; returns what undoes it."""
    layers, k = tuned.stack.layers, tuned.config.layer
    if stage == "generator":
        tuned.prompt_module.forward = _boom
        return lambda: delattr(tuned.prompt_module, "forward")
    module, kind = {
        "embeddings": (tuned.base_model.get_input_embeddings(), "hook"),
        "below k": (layers[0], "hook"),
        "layer k": (layers[k - 1], "hook"),
        "above k": (layers[k], "pre-hook"),
        "last layer": (layers[-1], "hook"),
    }[stage]
    handle = module.register_forward_pre_hook(_boom) if kind == "pre-hook" else module.register_forward_hook(_boom)
    return handle.remove


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("stage", ["embeddings", "below k", "layer k", "generator", "above k", "last layer"])
def test_an_exception_at_any_stage_leaves_global_state_as_it_was(family, stage):
    """Through the tuned model or the base model directly, with gradients on or off."""
    tuned = attach(tiny(family), LPTConfig(layer=2, num_tokens=3, hidden_size=8))
    ids, mask = inputs()
    expected = tuned(input_ids=ids, attention_mask=mask).last_hidden_state
    undo = _failure(tuned, stage)
    for call in (tuned, tuned.base_model):
        for grad_enabled in (True, False):
            with torch.set_grad_enabled(grad_enabled):
                before = ModelState.of(tuned)
                with pytest.raises(_Boom):
                    call(input_ids=ids, attention_mask=mask)
                before.assert_unchanged(tuned, f"a failure at {stage} (grad mode {grad_enabled})")
                assert tuned._call is None
            assert torch.is_grad_enabled()
    undo()
    torch.testing.assert_close(tuned(input_ids=ids, attention_mask=mask).last_hidden_state, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "family, kwargs, error, pattern",
    [
        ("bert", {"token_type_ids": torch.zeros(3, 4, dtype=torch.long)}, ValueError, "token_type_ids must have"),
        ("gpt2", {"position_ids": torch.arange(4)[None]}, ValueError, r"position_ids must have shape \(3, 9\)"),
        ("gpt2", {"input_ids": torch.full((3, 9), VOCAB)}, ValueError, r"input_ids must be in \[0, 64\)"),
        ("gpt2", {"input_ids": torch.zeros(3, 9)}, ValueError, "input_ids must be an integer tensor"),
        ("gpt2", {"attention_mask": [[1] * 9] * 3}, ValueError, r"2-D attention_mask of shape \(3, 9\), got list"),
        ("gpt2", {"labels": torch.zeros(3, 4, dtype=torch.long)}, ValueError, "labels must have shape"),
    ],
)
def test_inputs_are_checked_before_the_model_sees_them(family, kwargs, error, pattern):
    tuned = attach(tiny(family, head=True), LPTConfig(layer=2, num_tokens=3, hidden_size=8))
    ids, mask = inputs()
    before = ModelState.of(tuned)
    with pytest.raises(error, match=pattern):
        tuned(**{"input_ids": ids, "attention_mask": mask, **kwargs})
    before.assert_unchanged(tuned)


def test_a_bad_layer_in_a_saved_adapter_names_the_file(tmp_path):
    tuned = attach(tiny("gpt2", head=True), LPTConfig(num_tokens=3, hidden_size=8))
    tuned.save_adapter(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    meta["config"]["layer"] = LAYERS
    (tmp_path / "adapter_config.json").write_text(json.dumps(meta))
    model = tiny("gpt2", head=True)
    before = ModelState.of(model)
    with pytest.raises(
        ValueError, match=r"adapter_config.json: bad field in 'config': layer must be an int in \[1, 3\]"
    ):
        load_adapter(model, tmp_path)
    before.assert_unchanged(model)
    with pytest.raises(ValueError, match="already has an LPT attached"):  # about the model: not the file's fault
        load_adapter(tuned.base_model, tmp_path)


def test_unload_then_forward_or_generate_is_refused():
    model = tiny("gpt2", head=True)
    tuned = attach(model, LPTConfig(num_tokens=2, hidden_size=4))
    tuned.unload()
    tuned.unload()  # a second call is harmless
    ids = torch.randint(1, VOCAB, (1, 4))
    for call in (lambda: tuned(input_ids=ids), lambda: tuned.generate(ids, max_new_tokens=1, pad_token_id=0)):
        with pytest.raises(ValueError, match="was unloaded"):
            call()
    attach(model, LPTConfig(num_tokens=2, hidden_size=4))  # the model takes a new LPT


@pytest.mark.parametrize("where", ["input_ids", "attention_mask", "model"])
def test_meta_tensors_are_refused_by_name(where):
    """``aminmax`` of meta ids, transformers' mask copy or a meta model failed inside torch before."""
    model = tiny("gpt2", head=True)
    if where == "model":
        model.to("meta")
    tuned = attach(model, LPTConfig(num_tokens=2, hidden_size=4))
    before = ModelState.of(tuned)
    ids, mask = torch.randint(1, VOCAB, (1, 4)), torch.ones(1, 4, dtype=torch.long)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if where != "model":
        inputs[where] = inputs[where].to("meta")
    pattern = (
        "input_ids are on the meta device"
        if where == "input_ids"
        else f"{'attention_mask' if where == 'attention_mask' else 'input embedding'} on meta"
    )
    with pytest.raises(ValueError, match=pattern):
        tuned(**inputs)
    if where == "model":  # meta values cannot be compared: the grad mode and the hooks are what a pass changes
        assert torch.is_grad_enabled() == before.grad_enabled and ModelState.of(tuned).hooks == before.hooks
    else:
        before.assert_unchanged(tuned)


def test_generate_refuses_inputs_embeds_on_a_decoder():
    tuned = attach(tiny("gpt2", head=True), LPTConfig(num_tokens=2, hidden_size=4))
    with pytest.raises(ValueError, match="generate needs input_ids"):
        tuned.generate(inputs_embeds=torch.randn(1, 4, HIDDEN), max_new_tokens=1, pad_token_id=0)


# ------------------------------------------------------------------------------------------------------------------
# The causal source rule: the prompt is computed from each row's source tokens only
# ------------------------------------------------------------------------------------------------------------------

SOURCE = torch.tensor([3, 2, 4])  # real source tokens of inputs_left()'s rows (9, 6 and 8 real tokens)


def _source_labels(ids, mask, source):
    """Causal-LM labels: -100 over the pads and the source, the token itself after."""
    ends = (mask.cumsum(1) == 0).sum(1) + source  # the column of each row's first target
    return ids.masked_fill(torch.arange(ids.shape[1])[None, :] < ends[:, None], -100), ends


def test_source_from_labels_counts_the_real_tokens_before_the_first_target():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    labels = torch.tensor([[-100, -100, 5, 6, -100, 7], [3, 3, -100, -100, -100, 8], [-100] * 6, [4] * 6])
    # a pad's label never counts; a row without a target is all source; an all-pad row has none and is no error
    assert source_from_labels(labels, mask).tolist() == [2, 3, 3, 0]
    labels[1, 2] = 4
    with pytest.raises(ValueError, match=r"labels: row 1's first real token \(column 2\) is already a target"):
        source_from_labels(labels, mask)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", MODES)
def test_source_lengths_match_the_reference(family, mode):
    """NPG reads each row's last source token, the pooling modes pool the source (left-padded rows)."""
    model = tiny(family)
    plain = copy.deepcopy(model)
    tuned = attach(model, LPTConfig(layer=2, num_tokens=3, hidden_size=8, mode=mode), backend="torch")
    ids, mask = inputs_left()
    out = tuned(input_ids=ids, attention_mask=mask, source_lengths=SOURCE).last_hidden_state
    expected = reference_stack(plain, family, tuned.prompt_module, 2, ids, mask, "last", SOURCE)
    real = mask.bool()
    torch.testing.assert_close(out[real], expected[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", MODES)
def test_a_target_token_never_changes_the_logits_before_it(family, mode):
    """With the source told by labels or by source_lengths, changing a row's first target token leaves every
    logit before it as it was. Reading the whole input (no source given) lets the prompt carry that token to them."""
    tuned = attach(tiny(family, head=True), LPTConfig(layer=2, num_tokens=3, hidden_size=8, mode=mode)).eval()
    torch.manual_seed(3)
    for param in tuned.prompt_module.parameters():  # a generator whose prompt matters
        param.data = torch.randn_like(param) * 0.3
    ids, mask = inputs_left()
    labels, ends = _source_labels(ids, mask, SOURCE)
    rows = torch.arange(3)
    changed = ids.clone()
    changed[rows, ends] = (ids[rows, ends] + 1 - 2) % (VOCAB - 2) + 2  # another token (ids are >= 2)
    changed_labels = _source_labels(changed, mask, SOURCE)[0]
    with torch.no_grad():
        by_labels = tuned(input_ids=ids, attention_mask=mask, labels=labels).logits
        by_lengths = tuned(input_ids=ids, attention_mask=mask, source_lengths=SOURCE).logits
        after = tuned(input_ids=changed, attention_mask=mask, labels=changed_labels).logits
        whole, whole_after = (tuned(input_ids=x, attention_mask=mask).logits for x in (ids, changed))
    torch.testing.assert_close(by_labels, by_lengths, rtol=0, atol=0)
    for row, end in enumerate(ends.tolist()):
        torch.testing.assert_close(after[row, :end], by_labels[row, :end])
        assert not torch.allclose(after[row, end], by_labels[row, end])  # the changed token's own logits move
    moved = [not torch.allclose(whole_after[row, :end], whole[row, :end], rtol=1.3e-6, atol=1e-5) for row, end in
             enumerate(ends.tolist())]  # fmt: skip
    assert any(moved)  # the comparison above fails without a source


def test_source_arguments_are_checked_by_name():
    """Each refusal leaves the model as it was."""
    causal = attach(tiny("gpt2", head=True), LPTConfig(layer=2, num_tokens=3, hidden_size=8))
    ids, mask = inputs_left()
    labels = _source_labels(ids, mask, SOURCE)[0]
    bad = [
        ({"source_lengths": SOURCE.float()}, TypeError, "source_lengths must be an int64 or int32 tensor"),
        ({"source_lengths": [3, 2, 4]}, TypeError, "source_lengths must be a torch.Tensor"),
        ({"source_lengths": SOURCE[:2]}, ValueError, r"source_lengths must have shape \(B,\) = \(3,\)"),
        ({"source_lengths": torch.tensor([3, 0, 4])}, ValueError, r"source_lengths\[1\] = 0, but row 1 has 6 real"),
        ({"source_lengths": torch.tensor([3, 7, 4])}, ValueError, r"source_lengths\[1\] = 7, but row 1 has 6 real"),
        ({"source_lengths": SOURCE.to("meta")}, ValueError, "source_lengths on meta"),
        ({"labels": ids}, ValueError, r"labels: row 0's first real token \(column 0\) is already a target"),
    ]
    for kwargs, error, pattern in bad:
        before = ModelState.of(causal)
        with pytest.raises(error, match=pattern):
            causal(input_ids=ids, attention_mask=mask, **kwargs)
        before.assert_unchanged(causal, pattern)
    assert causal(input_ids=ids, attention_mask=mask, labels=labels).loss.isfinite()  # the same call, told its source
    for family in ("bert", "t5"):
        bidirectional = attach(tiny(family), LPTConfig(layer=2, num_tokens=3, hidden_size=8))
        with pytest.raises(ValueError, match=f"source_lengths applies to causal models .* this is {family}"):
            bidirectional(input_ids=ids, attention_mask=mask, source_lengths=SOURCE)


def test_absolute_positions_leave_the_models_own_numbering():
    """``positions="absolute"`` keeps what the model does by itself (the behaviour before the option): RoBERTa given
    left-padded ids numbers its positions skipping its pad ids, so passing the ids Hugging Face computes itself
    must change nothing; "tokens" numbers from the mask and does differ there (the check can fail)."""
    model = tiny("roberta")
    pad = model.config.pad_token_id
    ids, mask = inputs_left()
    ids = ids.masked_fill(mask == 0, pad)
    own = transformers.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids(ids, pad)
    config = LPTConfig(layer=2, num_tokens=3, hidden_size=8, positions="absolute")
    tuned = attach(model, config, backend="torch")
    out = tuned(input_ids=ids, attention_mask=mask).last_hidden_state
    given = tuned(input_ids=ids, attention_mask=mask, position_ids=own).last_hidden_state
    assert torch.equal(out, given)
    shifted = own.clone()
    shifted[mask.bool()] += 1  # any other numbering of the real tokens moves the outputs
    moved = tuned(input_ids=ids, attention_mask=mask, position_ids=shifted).last_hidden_state
    assert not torch.allclose(out[mask.bool()], moved[mask.bool()])
