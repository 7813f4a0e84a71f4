"""The ADePT module: official defaults and init, forward contract, dropout modes, inference folding."""

import math

import pytest
import torch
from torch import nn

import prompt_ops
from prompt_ops.ops import reference

BACKENDS = ["torch", "triton"]


def trained(module: prompt_ops.ADePT) -> prompt_ops.ADePT:
    """Move the FFN off its zero init, as training would."""
    with torch.no_grad():
        for p in (module.b_down, module.w_up, module.b_up):
            p.normal_(0, 0.3)
    return module


def test_defaults_and_official_init():
    embedding = nn.Embedding(100, 768)
    module = prompt_ops.ADePT(embedding)
    assert (module.num_tokens, module.rank, module.dropout) == (60, 19, 0.1)
    assert module.w_down.shape == (768, 19) and module.w_up.shape == (19, 768)
    bound = 1 / math.sqrt(19)  # kaiming_uniform(a=sqrt(5)) on a (d, r) tensor: fan_in = r
    assert module.w_down.abs().max() <= bound and module.w_down.abs().max() > 0.95 * bound
    for zero in (module.b_down, module.w_up, module.b_up):
        assert torch.equal(zero, torch.zeros_like(zero))
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == 76_051
    assert not embedding.weight.requires_grad
    ids = torch.randint(0, 100, (2, 10))
    out, _ = module(ids)  # zero offset at init: plain prompt tuning
    assert torch.equal(out[:, 60:], embedding.weight[ids])


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_reference_and_trains(backend):
    embedding = nn.Embedding(40, 24)
    module = trained(prompt_ops.ADePT(embedding, num_tokens=3, rank=5, backend=backend)).eval()
    ids, mask = torch.randint(0, 40, (3, 9)), torch.ones(3, 9, dtype=torch.long)
    out, out_mask = module(ids, mask)
    ffn = (module.w_down, module.b_down, module.w_up, module.b_up)
    ref_out, ref_mask = reference.adept_embed(ids, embedding.weight, module.prompt, *ffn, mask)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    assert torch.equal(out_mask, ref_mask)
    module.train()
    dropped, _ = module(ids, mask, seed=1)
    assert not torch.allclose(dropped, out)  # dropout acts in training mode
    dropped.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_folded_table_reproduces_eval_outputs(backend, dtype):
    embedding = nn.Embedding(300, 32).to(dtype)
    module = trained(prompt_ops.ADePT(embedding, num_tokens=4, rank=19, backend=backend)).eval()
    ids = torch.randint(0, 300, (3, 12))
    out, mask = module(ids)
    folded = module.fold(chunk_size=64)  # several chunks
    assert isinstance(folded, prompt_ops.PromptTuning)
    folded_out, folded_mask = folded(ids)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-2}
    torch.testing.assert_close(folded_out, out, **tolerance)
    assert torch.equal(folded_mask, mask)
    assert folded.embedding.weight.dtype == dtype and not folded.embedding.weight.requires_grad


def test_folding_leaves_tied_weights_alone():
    """T5 ties ``shared`` to the decoder and the LM head: folding builds a new table and changes neither."""
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, tie_word_embeddings=True
    )
    model = transformers.T5ForConditionalGeneration(config)
    shared = model.get_input_embeddings()
    before = shared.weight.detach().clone()
    module = trained(prompt_ops.ADePT(shared, num_tokens=2, rank=3))
    folded = module.fold()
    assert torch.equal(shared.weight, before)
    assert model.get_output_embeddings().weight.data_ptr() == shared.weight.data_ptr()
    assert model.decoder.embed_tokens.weight.data_ptr() == shared.weight.data_ptr()
    assert folded.embedding.weight.data_ptr() != shared.weight.data_ptr()


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"dropout": 1.0}, ValueError, r"dropout must be a float in \[0, 1\)"),
        ({"rank": 0}, ValueError, "rank must be >= 1"),
        ({"num_tokens": "60"}, TypeError, "num_tokens must be an int"),
    ],
)
def test_module_arguments_are_checked(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        prompt_ops.ADePT(nn.Embedding(10, 8), **kwargs)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        prompt_ops.ADePT(nn.Embedding(10, 8)).folded_weight(chunk_size=0)
