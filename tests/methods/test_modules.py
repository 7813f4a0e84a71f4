"""PromptTuning and DePT modules: defaults, the official init, forward contract, official-checkpoint import; the
argument checks every module constructor shares."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import prompt_ops
from prompt_ops.ops import reference

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dept_sst2"
BACKENDS = ["torch", "triton"]


def test_dept_defaults_and_official_init():
    embedding = nn.Embedding(100, 768)
    module = prompt_ops.DePT(embedding)
    assert (module.num_tokens, module.rank, module.max_length, module.lora_alpha) == (60, 30, 256, 8.0)
    assert module.scale == pytest.approx(8.0 / math.sqrt(30))  # alpha / sqrt(r), not alpha / r
    assert module.prompt.shape == (60, 768) and module.prompt.dtype == torch.float32
    assert module.lora_a.shape == (256, 30) and module.lora_b.shape == (30, 768)
    bound = 1 / math.sqrt(30)  # kaiming_uniform(a=sqrt(5)) with fan_in = r
    assert module.lora_a.abs().max() <= bound and module.lora_a.abs().max() > 0.95 * bound
    assert torch.equal(module.lora_b, torch.zeros(30, 768))
    assert not embedding.weight.requires_grad
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trainable == 76_800 == 100 * 768  # the budget of vanilla prompt tuning with 100 tokens on T5-Base


def test_prompt_init_from_token_ids_repeats_cyclically():
    embedding = nn.Embedding(30, 8)
    module = prompt_ops.PromptTuning(embedding, num_tokens=7, init_token_ids=[4, 9, 2])
    expected = embedding.weight.detach()[[4, 9, 2, 4, 9, 2, 4]]
    assert torch.equal(module.prompt.detach(), expected)
    assert module.prompt.requires_grad and module.prompt.dtype == torch.float32
    truncated = prompt_ops.DePT(embedding, num_tokens=2, rank=2, max_length=4, init_token_ids=[5, 6, 7])
    assert torch.equal(truncated.prompt.detach(), embedding.weight.detach()[[5, 6]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["PromptTuning", "DePT"])
def test_forward_matches_reference(cls, backend):
    embedding = nn.Embedding(40, 24)
    kwargs = {"rank": 5, "max_length": 12} if cls == "DePT" else {}
    module = getattr(prompt_ops, cls)(embedding, num_tokens=4, backend=backend, **kwargs)
    if cls == "DePT":
        nn.init.normal_(module.lora_b)  # move off the zero init so the offset is exercised
    ids = torch.randint(0, 40, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    out, out_mask = module(ids, mask)
    lora = (module.lora_a, module.lora_b, module.scale) if cls == "DePT" else (None, None, 0.0)
    ref_out, ref_mask = reference.dept_embed(ids, embedding.weight, module.prompt, *lora, mask)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    assert torch.equal(out_mask, ref_mask)
    out.square().sum().backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    assert embedding.weight.grad is None


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"num_tokens": 0}, ValueError, "num_tokens must be >= 1"),
        ({"rank": 2.5}, TypeError, "rank must be an int"),
        ({"max_length": -3}, ValueError, "max_length must be >= 1"),
        ({"lora_alpha": 0}, ValueError, "lora_alpha must be a positive number"),
        ({"init_token_ids": [3, 99]}, ValueError, r"init_token_ids must be in \[0, 40\)"),
        ({"init_token_ids": []}, ValueError, "at least one token id"),
    ],
)
def test_module_arguments_are_checked(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        prompt_ops.DePT(nn.Embedding(40, 8), **kwargs)
    with pytest.raises(TypeError, match="embedding must be a torch.nn.Embedding"):
        prompt_ops.PromptTuning(nn.Linear(4, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_from_official_reproduces_the_official_formula(backend):
    """The authors' SST-2 adapter: our module equals the official forward written out from the raw checkpoint."""
    torch.manual_seed(1)
    embedding = nn.Embedding(32128, 768)  # T5-Base's vocabulary and width (random weights: no hub here)
    module = prompt_ops.DePT.from_official(FIXTURE, embedding, backend=backend)
    state = torch.load(FIXTURE / "adapter_model.bin", map_location="cpu", weights_only=True)
    config = json.loads((FIXTURE / "adapter_config.json").read_text())
    prompt = state["prompt_embeddings"]
    lora_a, lora_b = state["prompt_encoder.lora_embedding_A"], state["prompt_encoder.lora_embedding_B"]
    scaling = config["lora_alpha"] / math.sqrt(config["r"])
    assert module.scale == scaling and (module.num_tokens, module.rank, module.max_length) == (60, 30, 256)

    ids = torch.randint(0, 32128, (2, 256))  # the official pipeline pads to max_length
    mask = torch.ones(2, 256, dtype=torch.long)
    inputs_embeds = embedding(ids).detach()
    inputs_embeds += scaling * (lora_a @ lora_b).repeat(2, 1, 1)  # peft_model.py, PROMPT_TUNING_LORA branch
    official = torch.cat([prompt.unsqueeze(0).expand(2, -1, -1), inputs_embeds], dim=1)
    official_mask = torch.cat([torch.ones(2, 60, dtype=torch.long), mask], dim=1)

    out, out_mask = module(ids, mask)
    torch.testing.assert_close(out, official, rtol=1e-5, atol=1e-5)
    assert torch.equal(out_mask, official_mask)


def _copy_fixture(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    shutil.copytree(FIXTURE, folder)
    for file in folder.iterdir():
        file.chmod(0o644)
    return folder


def test_from_official_refuses_bad_folders(tmp_path):
    embedding = nn.Embedding(100, 768)
    with pytest.raises(ValueError, match=r"adapter_config.json: not found"):
        prompt_ops.DePT.from_official(tmp_path, embedding)

    folder = _copy_fixture(tmp_path)
    blob = (folder / "adapter_model.bin").read_bytes()
    (folder / "adapter_model.bin").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"adapter_model.bin: cannot be read as a weights-only torch checkpoint"):
        prompt_ops.DePT.from_official(folder, embedding)

    (folder / "adapter_model.bin").write_bytes(blob)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))
    with pytest.raises(ValueError, match=r"peft_type is 'LORA'"):
        prompt_ops.DePT.from_official(folder, embedding)

    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 16}))
    with pytest.raises(ValueError, match=r"lora_embedding_A has shape \(256, 30\) but adapter_config.json implies"):
        prompt_ops.DePT.from_official(folder, embedding)

    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"adapter_config.json: not a readable JSON adapter config"):
        prompt_ops.DePT.from_official(folder, embedding)

    (folder / "adapter_config.json").write_text(json.dumps(config))
    state = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    del state["prompt_encoder.lora_embedding_B"]
    torch.save(state, folder / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"missing \['prompt_encoder.lora_embedding_B'\]"):
        prompt_ops.DePT.from_official(folder, embedding)


def test_from_official_refuses_another_base_model():
    with pytest.raises(ValueError, match=r"token_dim 768 but embedding has width 512"):
        prompt_ops.DePT.from_official(FIXTURE, nn.Embedding(100, 512))


# ------------------------------------------------------------------------------------------------------------------
# Argument checks shared by every module constructor (regressions of the bad-input campaign)
# ------------------------------------------------------------------------------------------------------------------

MODULES = {
    "PromptTuning": {},
    "DePT": {"rank": 2, "max_length": 6},
    "ADePT": {"rank": 2},
    "LAMP": {"num_tokens": 4, "rank": 2, "pool": 2},
    "EPT": {"rank": 2, "max_length": 6, "num_subspaces": 2, "subspace_rank": 2},
}


def _build(cls: str, embedding: nn.Embedding, **kwargs):
    return getattr(prompt_ops, cls)(embedding, **{"num_tokens": 4, **MODULES[cls], **kwargs})


@pytest.mark.parametrize("cls", sorted(MODULES))
@pytest.mark.parametrize(
    "init_token_ids, error, pattern",
    [
        ([1.7], TypeError, r"init_token_ids must be a 1-D sequence of integer token ids.*holds a float \(1.7\)"),
        ("ab", TypeError, "init_token_ids must be a 1-D sequence of integer token ids.*got str"),
        ([[1, 2], [3]], TypeError, r"init_token_ids must be .* holds a list"),
        ([True, 2], TypeError, r"init_token_ids must be .* holds a bool"),
        (5, TypeError, "init_token_ids must be a 1-D sequence.*got int"),
        (torch.tensor([1.0, 2.0]), TypeError, "init_token_ids must be .* holds a float"),
        (torch.tensor([[1, 2]]), ValueError, "init_token_ids must be a 1-D sequence.*got 2-D"),
        (np.array([1.5]), TypeError, "init_token_ids must be .* holds a float"),
        ([2**70], ValueError, r"init_token_ids must be in \[0, 40\)"),
        ([-1], ValueError, r"init_token_ids must be in \[0, 40\)"),
        ([], ValueError, "init_token_ids must hold at least one token id"),
    ],
)
def test_init_token_ids_must_be_integers_in_range(cls, init_token_ids, error, pattern):
    embedding = nn.Embedding(40, 8)
    with pytest.raises(error, match=pattern):
        _build(cls, embedding, init_token_ids=init_token_ids)
    assert embedding.weight.requires_grad  # refused before the embedding is frozen


@pytest.mark.parametrize("cls", sorted(MODULES))
@pytest.mark.parametrize("ids", [[3, 7], (3, 7), torch.tensor([3, 7], dtype=torch.int32), np.array([3, 7])])
def test_init_token_ids_accept_integer_sequences_tensors_and_arrays(cls, ids):
    embedding = nn.Embedding(40, 8)
    module = _build(cls, embedding, init_token_ids=ids)
    if cls != "LAMP":  # LAMP keeps the SVD of the initial prompt, not the prompt
        assert torch.equal(module.prompt.detach(), embedding.weight.detach()[[3, 7, 3, 7]])


@pytest.mark.parametrize(
    "cls, kwargs, pattern",
    [
        ("PromptTuning", {"num_tokens": 2**40}, r"prompt \(num_tokens=1099511627776, embedding width=8\).*num_tokens"),
        ("DePT", {"max_length": 2**40}, r"lora_a \(max_length=1099511627776, rank=2\).*lower max_length or rank"),
        ("DePT", {"rank": 2**40}, r"lora_a \(max_length=6, rank=1099511627776\)"),
        ("ADePT", {"rank": 2**40}, r"w_down \(embedding width=8, rank=1099511627776\).*lower rank"),
        ("EPT", {"subspace_rank": 2**40}, r"w_down \(.*subspace_rank=1099511627776\)"),
        ("EPT", {"num_subspaces": 2**40}, r"w_down \(num_subspaces=1099511627776"),
        ("LAMP", {"num_tokens": 2**40}, r"prompt \(num_tokens=1099511627776"),
    ],
)
def test_sizes_no_memory_holds_are_refused_before_allocation(cls, kwargs, pattern):
    embedding = nn.Embedding(40, 8)
    with pytest.raises(ValueError, match=pattern):
        _build(cls, embedding, **kwargs)
    assert embedding.weight.requires_grad


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"model_dim": 2**40}, r"prompt \(num_tokens=5, model_dim=1099511627776\)"),
        ({"hidden_size": 2**40}, r"w_down \(model_dim=8, hidden_size=1099511627776\)"),
        ({"num_tokens": 2**40, "mode": "pool"}, r"prompt \(num_tokens=1099511627776, model_dim=8\)"),  # APPG too
        ({"num_tokens": 2**30}, r"num_tokens"),
    ],
)
def test_lpt_sizes_no_memory_holds_are_refused(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        prompt_ops.LPT(**{"model_dim": 8, **kwargs})


@pytest.mark.parametrize("cls", ["DePT", "EPT"])
@pytest.mark.parametrize("alpha", [math.inf, -math.inf, math.nan, 1e300])  # 1e300: fp32 overflow
def test_lora_alpha_must_be_finite_at_construction(cls, alpha):
    with pytest.raises(ValueError, match="lora_alpha must be a positive number and finite"):
        _build(cls, nn.Embedding(40, 8), lora_alpha=alpha)
    with pytest.raises(TypeError, match="lora_alpha must be a positive number, got str"):
        _build(cls, nn.Embedding(40, 8), lora_alpha="8")


def test_lpt_names_its_own_arguments():
    with pytest.raises(ValueError, match=r"^dropout must be a float in \[0, 1\), got 1.0$"):
        prompt_ops.LPT(8, dropout=1.0)
    with pytest.raises(TypeError, match="dropout must be a float"):
        prompt_ops.LPT(8, dropout="0.1")
    with pytest.raises(ValueError, match="mode must be one of"):
        prompt_ops.LPT(8, mode=["naive"])
    with pytest.raises(ValueError, match="backend must be one of"):
        prompt_ops.LPT(8, backend="cuda")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mode", ["pool", "max"])
def test_lpt_module_pools_only_the_source_rows(backend, mode):
    """``LPT.prompt``/``forward`` pass ``source_lengths`` on: the prompt pools each row's first
    ``source_lengths[b]`` valid rows (left padding included), the insertion's mask is the whole input's."""
    module = prompt_ops.LPT(8, num_tokens=2, hidden_size=3, mode=mode, backend=backend).eval()
    hidden = torch.randn(2, 6, 8)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    source_lengths = torch.tensor([3, 2])
    params = [module.w_down, module.b_down, module.w_up, module.b_up]
    expected = reference.lpt_prompt(hidden, *params, 2, None, mask, mode, None, source_lengths)
    torch.testing.assert_close(module.prompt(hidden, mask, source_lengths=source_lengths), expected, rtol=1e-4,
                               atol=1e-4)  # fmt: skip
    out, out_mask = module(hidden, mask, source_lengths=source_lengths)
    torch.testing.assert_close(out[:, :2], expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(out_mask, torch.cat([torch.ones(2, 2, dtype=torch.long), mask], 1))
    with pytest.raises(ValueError, match=r"source_lengths\[1\] = 0: row 1 has no source rows"):
        module(hidden, mask, source_lengths=torch.tensor([3, 0]))


REFUSED = [
    ({"backend": "cuda"}, ValueError, r"backend must be one of \('auto', 'triton', 'torch'\) or None"),
    ({"rank": True}, TypeError, "rank must be an int, got bool"),
    ({"num_tokens": 4.0}, TypeError, "num_tokens must be an int, got float"),
]


@pytest.mark.parametrize(
    "cls, kwargs, error, pattern",
    [(cls, *case) for cls in sorted(MODULES) for case in REFUSED if cls != "PromptTuning" or "rank" not in case[0]],
)
def test_refused_arguments_leave_the_embedding_trainable(cls, kwargs, error, pattern):
    embedding = nn.Embedding(40, 8)
    with pytest.raises(error, match=pattern):
        _build(cls, embedding, **kwargs)
    assert embedding.weight.requires_grad


def test_embedding_must_be_a_float_table():
    with pytest.raises(TypeError, match="embedding must be a torch.nn.Embedding, got Linear"):
        prompt_ops.DePT(nn.Linear(4, 4))
    table = nn.Embedding(10, 4)
    table.weight = nn.Parameter(torch.zeros(10, 4, dtype=torch.long), requires_grad=False)
    with pytest.raises(TypeError, match="embedding must have floating-point weights, got torch.int64"):
        prompt_ops.PromptTuning(table)
    with pytest.raises(ValueError, match=r"embedding must have a \(V, d\) weight with V, d >= 1, got \(0, 4\)"):
        prompt_ops.PromptTuning(nn.Embedding(0, 4))


def test_embed_tokens_checks_its_arguments():
    module = prompt_ops.DePT(nn.Embedding(40, 8), num_tokens=2, rank=2, max_length=6)
    with pytest.raises(ValueError, match="start must be an int >= 0"):
        module.embed_tokens(torch.zeros(1, 2, dtype=torch.long), -1)
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        module.embed_tokens([[1, 2]], 0)


def test_from_official_refuses_a_non_embedding_table():
    with pytest.raises(TypeError, match="embedding must be a torch.nn.Embedding, got Linear"):
        prompt_ops.DePT.from_official(FIXTURE, nn.Linear(768, 768))
    with pytest.raises(TypeError, match="path must be a str or os.PathLike folder, got NoneType"):
        prompt_ops.DePT.from_official(None, nn.Embedding(100, 768))


@pytest.mark.parametrize(
    "field, value, pattern",
    [
        ("r", 2.5, r"field 'r' must be a positive integer, got 2.5"),
        ("r", 30.0, r"field 'r' must be a positive integer, got 30.0"),
        ("num_virtual_tokens", "60", r"field 'num_virtual_tokens' must be a positive integer"),
        ("max_length", True, r"field 'max_length' must be a positive integer, got True"),
        ("lora_alpha", math.inf, r"field 'lora_alpha' must be a positive number, finite in float32, got inf"),
        ("lora_alpha", None, r"field 'lora_alpha' must be a positive number, finite in float32, got None"),
    ],
)
def test_from_official_integer_fields_must_be_integers(tmp_path, field, value, pattern):
    folder = _copy_fixture(tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ValueError, match=r"adapter_config.json: " + pattern):
        prompt_ops.DePT.from_official(folder, nn.Embedding(100, 768))


def test_from_official_refuses_non_finite_tensors(tmp_path):
    folder = tmp_path / "nan"
    shutil.copytree(FIXTURE, folder)
    state = torch.load(FIXTURE / "adapter_model.bin", map_location="cpu", weights_only=True)
    state["prompt_embeddings"][0, 0] = float("nan")
    torch.save(state, folder / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"adapter_model.bin: prompt_embeddings holds NaN or infinity"):
        prompt_ops.DePT.from_official(folder, nn.Embedding(10, 768))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_dropout_set_out_of_range_after_construction_is_named_as_the_module_calls_it(backend):
    """Not the functional entries' ``dropout_p``, which the user of a module never wrote."""
    adept = prompt_ops.ADePT(nn.Embedding(10, 8), num_tokens=2, rank=2, backend=backend).train()
    lpt = prompt_ops.LPT(8, num_tokens=2, hidden_size=3, backend=backend).train()
    adept.dropout = lpt.dropout = 1.5
    with pytest.raises(ValueError, match=r"^dropout must be a float in \[0, 1\), got 1.5"):
        adept(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^dropout must be a float in \[0, 1\), got 1.5"):
        lpt(torch.randn(1, 3, 8))
