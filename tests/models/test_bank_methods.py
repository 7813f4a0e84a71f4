"""The adapter bank's LAMP, EPT and ADePT adapters, alone and mixed with prompt tuning, DePT and ``"__base__"`` rows
in one batch: each row equals its adapter attached alone (outputs, loss, every adapter's gradients from its own
rows), greedy generation, the kept built prompts, save/load, the max_length refusal, ADePT's dropout."""

import pytest
import torch

from prompt_ops.models import (
    ADePTConfig,
    DePTConfig,
    EPTConfig,
    LAMPConfig,
    PromptTuningConfig,
    attach_many,
    load_adapter,
)
from prompt_ops.models import bank as bank_module
from prompt_ops.models.bank import TABLES, AdapterBank
from tests.models.model_state import ModelState
from tests.models.test_attach import VOCAB, tiny
from tests.models.test_multi_adapter import (
    GREEDY,
    TOL,
    alone,
    assert_padding_has_no_gradient,
    assert_rows_equal_each_adapter_alone,
    batch,
    generated_alone,
    mixed,
    table_grad,
)

transformers = pytest.importorskip("transformers")

BANKS = {  # ragged within each bank: prompt rows, ranks, lengths, subspaces all differ
    "lamp": {"lamp_a": LAMPConfig(num_tokens=6, rank=2, pool=2), "lamp_b": LAMPConfig(num_tokens=4, rank=3, pool=1)},
    "ept": {
        "ept_a": EPTConfig(num_tokens=3, rank=2, max_length=9, num_subspaces=2, subspace_rank=2),
        "ept_b": EPTConfig(num_tokens=2, rank=3, max_length=12, num_subspaces=3, subspace_rank=1, lora_alpha=4.0),
    },
    "adept": {"adept_a": ADePTConfig(num_tokens=3, rank=2), "adept_b": ADePTConfig(num_tokens=5, rank=4)},
    "all": {
        "pt": PromptTuningConfig(num_tokens=2),
        "dept": DePTConfig(num_tokens=4, rank=2, max_length=10),
        "lamp": LAMPConfig(num_tokens=6, rank=2, pool=2),
        "ept": EPTConfig(num_tokens=3, rank=2, max_length=8, num_subspaces=2, subspace_rank=2),
        "adept": ADePTConfig(num_tokens=5, rank=3),
    },
}
ROWS = {
    "lamp": ["lamp_a", "__base__", "lamp_b", "lamp_a"],
    "ept": ["ept_b", "ept_a", "__base__", "ept_a"],
    "adept": ["adept_a", "adept_b", "__base__", "adept_b"],
    "all": ["lamp", "__base__", "ept", "adept", "pt", "dept", "adept", "lamp"],
}
LENGTHS = [7, 4, 6, 5, 3, 7, 6, 5]  # real tokens per row, of L = 7


CASES = [
    *[(bank, family, side, None) for bank in ("lamp", "ept", "adept") for family, side in
      (("gpt2", "left"), ("bert-mlm", "right"))],
    *[("all", family, side, None) for family in ("gpt2", "bert-mlm") for side in ("left", "right")],
    ("all", "t5", "right", None),
    ("all", "gpt2", "left", "triton"),
]  # fmt: skip


@pytest.mark.parametrize("bank, family, side, backend", CASES)
def test_each_row_equals_its_adapter_alone_and_base_rows_the_plain_model(bank, family, side, backend):
    multi = mixed(family, BANKS[bank], backend=backend)
    assert_rows_equal_each_adapter_alone(multi, family, side, ROWS[bank], LENGTHS[: len(ROWS[bank])])


def test_greedy_generation_of_each_row_equals_its_adapter_alone(monkeypatch):
    """A left-padded GPT-2 batch of every method and base rows, with large EPT and ADePT offsets: each row's new
    tokens are its adapter's alone (the plain model's); plain lookups after the prefill change the EPT, DePT and
    ADePT rows' tokens and no other row's (so the comparison sees the decode path)."""
    multi = mixed("gpt2", BANKS["all"])
    with torch.no_grad():
        multi.bank.lora_b.mul_(10)
        multi.adapter_state_dict("adept")["w_up"].mul_(30)
    rows = ROWS["all"]
    ids, mask, _ = batch("left", LENGTHS)
    generated = multi.generate(ids, attention_mask=mask, adapter_names=rows, **GREEDY)
    for b, name in enumerate(rows):
        real = mask[b].bool()
        expected = generated_alone(multi, name, ids[b : b + 1, real], **GREEDY)
        assert torch.equal(generated[b, 7:], expected[0, int(real.sum()) :]), (b, name)
    monkeypatch.setattr(multi.bank, "embed_tokens", lambda input_ids, start, index: multi.bank.embedding(input_ids))
    plain = multi.generate(ids, attention_mask=mask, adapter_names=rows, **GREEDY)
    for b, name in enumerate(rows):
        assert torch.equal(generated[b], plain[b]) == (name in ("pt", "lamp", "__base__")), (b, name)


def test_built_prompts_are_kept_without_grad_and_rebuilt_after_an_optimizer_step(monkeypatch):
    """Without grad each present LAMP/EPT adapter's prompt is built once and kept; an optimizer step changes its
    tensors, so the next call builds it again and every row still equals its adapter alone with the new values."""
    builds = []
    for functional in ("lamp_prompt", "ept_prompt"):
        original = getattr(bank_module, functional)
        monkeypatch.setattr(bank_module, functional, lambda *a, _f=original, **k: builds.append(1) or _f(*a, **k))
    multi = mixed("gpt2", BANKS["all"])
    rows = ["lamp", "pt", "__base__", "ept"]
    ids, mask, labels = batch("left", LENGTHS[:4])
    with torch.no_grad():
        before = multi(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
        multi(input_ids=ids, attention_mask=mask, adapter_names=rows)
    assert len(builds) == 2  # lamp and ept once each, kept for the second call
    optimizer = torch.optim.SGD([p for p in multi.parameters() if p.requires_grad], lr=1.0)
    multi(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=rows).loss.backward()
    optimizer.step()
    assert len(builds) == 4  # under grad: built per call
    with torch.no_grad():
        after = multi(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
    assert len(builds) == 6
    for name in ("lamp", "ept"):
        b = rows.index(name)
        single = alone(multi, name)(input_ids=ids[b : b + 1], attention_mask=mask[b : b + 1]).logits[0]
        real = mask[b].bool()
        torch.testing.assert_close(after[b, multi.bank.num_slots :][real], single[-7:][real], **TOL)
        assert not torch.allclose(after[b], before[b]), name  # the step changed this row


def test_every_method_round_trips_through_its_folder_bitwise(tmp_path):
    multi = mixed("gpt2", BANKS["all"])
    for name in BANKS["all"]:
        folder = multi.save_adapter(name, tmp_path / name)
        single = load_adapter(tiny("gpt2"), folder)  # the single-adapter format
        assert single.config == multi.bank.config(name)
        assert single.adapter_state_dict().keys() == multi.adapter_state_dict(name).keys()
        for key, value in single.adapter_state_dict().items():
            assert torch.equal(value, multi.adapter_state_dict(name)[key])
        multi.load_adapter(folder, adapter_name=f"{name}-copy")
        for key, value in multi.adapter_state_dict(f"{name}-copy").items():
            assert torch.equal(value, multi.adapter_state_dict(name)[key])
    from_folders = attach_many(tiny("gpt2"), {name: tmp_path / name for name in BANKS["all"]})
    for name in BANKS["all"]:
        for key, value in from_folders.adapter_state_dict(name).items():
            assert torch.equal(value, multi.adapter_state_dict(name)[key])


@pytest.mark.parametrize("name, max_length", [("ept", 8), ("dept", 10)])
def test_rows_longer_than_their_adapters_max_length_are_refused_by_name(name, max_length):
    """As each adapter alone refuses an input longer than its offsets; rows of other adapters are not limited."""
    multi = mixed("gpt2", BANKS["all"])
    ids = torch.randint(1, VOCAB, (2, max_length + 1))
    before = ModelState.of(multi)
    pattern = f"input_ids has L = {max_length + 1} tokens, more than the max_length = {max_length} of adapter '{name}'"
    with pytest.raises(ValueError, match=pattern):
        multi(input_ids=ids, adapter_names=["pt", name])
    before.assert_unchanged(multi, name)
    assert multi(input_ids=ids, adapter_names=["pt", "lamp"]).logits.shape[1] == multi.bank.num_slots + max_length + 1
    assert multi(input_ids=ids[:, :max_length], adapter_names=["pt", name]).logits.isfinite().all()


def test_adept_dropout_in_training_trains_only_the_adapters_of_the_batch():
    """Training mode with ADePT dropout 0.5: the ADePT rows' token embeddings change from call to call, the other
    rows' do not; the backward reaches the present adapters only, and the padding gets exactly zero."""
    adapters = {**BANKS["adept"], "lamp": BANKS["all"]["lamp"], "pt": BANKS["all"]["pt"]}
    adapters = {name: (ADePTConfig(num_tokens=c.num_tokens, rank=c.rank, dropout=0.5) if name.startswith("adept")
                       else c) for name, c in adapters.items()}  # fmt: skip
    multi = mixed("gpt2", adapters)
    multi.train()
    bank, rows = multi.bank, ["adept_a", "pt", "__base__", "adept_a"]
    ids, mask, labels = batch("right", LENGTHS[:4])
    first, _ = bank(ids, mask, bank.index(rows))
    second, _ = bank(ids, mask, bank.index(rows))
    for b, name in enumerate(rows):
        assert torch.equal(first[b], second[b]) == (name != "adept_a"), (b, name)
    multi(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=rows).loss.backward()
    for name in multi.adapter_names:
        for key, view in multi.adapter_state_dict(name).items():
            grad = table_grad(multi, name, key, view.shape)
            assert grad.ne(0).any() == (name in rows), (name, key)
    assert_padding_has_no_gradient(multi.bank)


# ----------------------------------------------------------------------------------------------------------------
# bad input to the bank itself
# ----------------------------------------------------------------------------------------------------------------


def small_bank() -> AdapterBank:
    """Every method in one bank over a bare embedding (ADePT with dropout, so training mode draws multipliers)."""
    torch.manual_seed(0)
    bank = AdapterBank(torch.nn.Embedding(VOCAB, 8), backend="torch")
    adapters = {**BANKS["all"], "adept": ADePTConfig(num_tokens=5, rank=3, dropout=0.2)}
    for name, config in adapters.items():
        bank.add(name, config)
    return bank


def _forward(ids=None, mask=None, index=None):
    good_ids, good_mask = torch.randint(0, VOCAB, (3, 5)), torch.ones(3, 5, dtype=torch.long)
    good_index = torch.tensor([3, 4, -1])  # ept and adept rows: both families' ops
    return lambda bank: bank(
        good_ids if ids is None else ids, good_mask if mask is None else mask, good_index if index is None else index
    )


def _embed_tokens(start):
    return lambda bank: bank.embed_tokens(torch.randint(0, VOCAB, (3, 2)), start, torch.tensor([1, 4, -1]))


BANK_BAD_INPUTS = [
    ("index-past-N", _forward(index=torch.tensor([3, 5, -1])), ValueError, r"adapter_index must be in \[-1, 5\).*5"),
    ("index-past-N-one-family", _forward(index=torch.tensor([0, 7, 1])), ValueError, r"adapter_index must be in"),
    ("index-below-1", _forward(index=torch.tensor([4, -2, 0])), ValueError, r"adapter_index must be in.*-2"),
    ("index-list", _forward(index=[3, 4, -1]), TypeError, r"adapter_index must be a torch.Tensor"),
    ("index-2d", _forward(index=torch.tensor([[3, 4, -1]])), ValueError, r"adapter_index must have shape \(B,\)"),
    ("index-float", _forward(index=torch.tensor([3.0, 4.0, 0.0])), TypeError, r"adapter_index must hold int64"),
    ("index-short", _forward(index=torch.tensor([3, 4])), ValueError, r"adapter_index must have shape \(B,\) = \(3,\)"),
    ("index-long", _forward(index=torch.tensor([3, 4, 0, 1])), ValueError, r"adapter_index must have shape \(B,\)"),
    ("index-meta", _forward(index=torch.tensor([3, 4, 0], device="meta")), ValueError, r"adapter_index must be on"),
    ("mask-rows", _forward(mask=torch.ones(4, 5)), ValueError, r"attention_mask must have shape \(B, L\)"),
    ("ids-list", _forward(ids=[[1, 2, 3]] * 3), TypeError, r"input_ids must be a torch.Tensor"),
    ("ids-1d", _forward(ids=torch.tensor([1, 2, 3])), ValueError, r"input_ids must have shape \(B, L\)"),
    ("start-list", _embed_tokens([0, 1, 2]), TypeError, r"start must be a torch.Tensor"),
    ("start-short", _embed_tokens(torch.tensor([0, 1])), ValueError, r"start must have shape \(B,\) = \(3,\)"),
    ("start-float", _embed_tokens(torch.tensor([0.0, 1.0, 2.0])), TypeError, r"start must hold int64 or int32"),
]


@pytest.mark.parametrize("call, error, pattern", [pytest.param(*case[1:], id=case[0]) for case in BANK_BAD_INPUTS])
def test_bank_refuses_bad_rows_by_name_and_stays_as_it_was(call, error, pattern):
    """Every per-row argument is checked before the batch is split by family: no IndexError from a list lookup, no
    row silently dropped or added by a short/long index, a mask of the wrong batch caught in a mixed batch."""
    bank = small_bank()
    before = ModelState.of(bank)
    with pytest.raises(error, match=pattern):
        call(bank)
    before.assert_unchanged(bank)


def test_bank_runs_an_empty_sequence_in_training_with_dropout():
    bank = small_bank().train()
    embeds, mask = bank(torch.zeros(3, 0, dtype=torch.long), None, torch.tensor([4, 1, -1]))
    assert embeds.shape == (3, bank.num_slots, 8) and mask.shape == (3, bank.num_slots)
    embeds.sum().backward()
    assert not bank.adept_w_down.grad.any()  # no tokens: no FFN gradient


def test_a_bank_emptied_and_refilled_keeps_the_dtype_it_was_cast_to():
    bank = AdapterBank(torch.nn.Embedding(VOCAB, 8), backend="torch")
    bank.add("first", PromptTuningConfig(num_tokens=2))
    assert bank.prompts.dtype == torch.float32
    bank.to(torch.bfloat16)
    bank.delete("first")
    assert bank.prompts is None
    bank.add("second", DePTConfig(num_tokens=1, rank=2, max_length=4))
    assert bank.prompts.dtype == bank.lora_a.dtype == bank.lora_b.dtype == torch.bfloat16


def test_add_refuses_a_state_on_the_meta_device_by_name():
    bank = small_bank()
    state = {key: value.to("meta") for key, value in bank.adapter_state_dict("adept").items()}
    before = ModelState.of(bank)
    with pytest.raises(ValueError, match=r"state: .*meta device"):
        bank.add("copy", bank.config("adept"), state)
    before.assert_unchanged(bank)
    assert bank.names == list(BANKS["all"])


# ----------------------------------------------------------------------------------------------------------------
# the bank alone against each method's module alone
# ----------------------------------------------------------------------------------------------------------------


def module_alone(bank: AdapterBank, name: str) -> torch.nn.Module:
    """Adapter ``name`` as its method's own module over the bank's embedding, with the bank's unpadded values."""
    module = bank.config(name).build(bank.embedding, backend=bank.backend).eval()
    with torch.no_grad():
        for key, value in bank.adapter_state_dict(name).items():
            getattr(module, key).copy_(value)
    return module


@pytest.mark.parametrize("slots", ["front", "after_prompt"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bank_rows_and_gradients_equal_each_module_alone(dtype, backend, slots):
    """A left-padded batch of every method, ``"__base__"`` and a repeated adapter over an fp32 or bf16 table: each
    row's prompt and token columns and mask equal its method's module on its rows alone, each adapter's gradient in
    the stacked tables the module's gradient from those rows (bf16 outputs, fp32 masters), the padding exactly 0."""
    torch.manual_seed(0)
    bank = AdapterBank(torch.nn.Embedding(VOCAB, 8).to(dtype), backend=backend, slots=slots).eval()
    for name, config in BANKS["all"].items():
        bank.add(name, config)
        with torch.no_grad():  # off the init (zero offsets would hide them), the padding left zero
            for tensor in bank.adapter_state_dict(name).values():
                tensor.add_(0.5 * torch.randn_like(tensor))
    rows = ["adept", "ept", "__base__", "lamp", "dept", "pt", "adept"]
    ids, mask, _ = batch("left", [7, 4, 6, 2, 7, 3, 5])
    out, out_mask = bank(ids, mask, bank.index(rows))
    grad = torch.randn(out.shape)
    (out.float() * grad).sum().backward()
    slots_count, tol = bank.num_slots, ({"rtol": 1.6e-2, "atol": 1e-2} if dtype == torch.bfloat16 else TOL)
    for name in BANKS["all"]:
        picked = [b for b, row in enumerate(rows) if row == name]
        module, m = module_alone(bank, name), bank.prompt_rows(name)
        first = slots_count - m if slots == "front" else 0
        columns = list(range(first, first + m)) + list(range(slots_count, out.shape[1]))
        expected, expected_mask = module(ids[picked], mask[picked])
        torch.testing.assert_close(out[picked][:, columns].float(), expected.float(), **tol, msg=name)
        assert torch.equal(out_mask[picked][:, columns], expected_mask), name
        (expected.float() * grad[picked][:, columns]).sum().backward()
        for key, value in bank.adapter_state_dict(name).items():
            got = getattr(bank, TABLES[type(bank.config(name))][key]).grad[bank.names.index(name)]
            want = getattr(module, key).grad
            scale = want.abs().max()
            assert scale > 0, (name, key)
            assert (got[tuple(slice(0, s) for s in value.shape)] - want).abs().max() <= 1e-4 * scale, (name, key)
    base = rows.index("__base__")
    assert torch.equal(out[base, slots_count:], bank.embedding.weight[ids[base]]) and not out[base, :slots_count].any()
    assert_padding_has_no_gradient(bank)


def test_kept_built_prompts_never_outlive_a_change(monkeypatch):
    """Without grad a LAMP/EPT prompt is built once and kept, and built again after anything that changes what it
    would be: the tables' dtype, a re-stack (add or delete), the backend (the attribute or ``$PROMPT_OPS_BACKEND``),
    loaded values; after each the row equals the module alone."""
    builds = []
    original = bank_module.lamp_prompt
    monkeypatch.setattr(bank_module, "lamp_prompt", lambda *a, **k: builds.append(1) or original(*a, **k))
    bank = small_bank().eval()
    ids, index = torch.randint(0, VOCAB, (1, 4)), bank.index(["lamp"])

    def row_equals_module_alone():
        with torch.no_grad():
            out = bank(ids, None, index)[0]
            expected = module_alone(bank, "lamp")(ids)[0]
        m = bank.prompt_rows("lamp")
        columns = list(range(bank.num_slots - m, out.shape[1]))
        torch.testing.assert_close(out[:, columns], expected, **TOL)

    row_equals_module_alone()
    row_equals_module_alone()
    assert len(builds) == 1
    changes = {
        "dtype": lambda: bank.to(torch.float64),
        "dtype back": lambda: bank.to(torch.float32),
        "add": lambda: bank.add("more", PromptTuningConfig(num_tokens=1)),
        "backend attribute": lambda: setattr(bank, "backend", "triton"),
        "backend variable": lambda: (
            setattr(bank, "backend", None),
            monkeypatch.setenv("PROMPT_OPS_BACKEND", "torch"),
        ),
        "loaded values": lambda: bank.load_state_dict({**bank.state_dict(), "lamp_q": bank.lamp_q.detach() * 3}),
    }
    for change, make in changes.items():
        before = len(builds)
        make()
        row_equals_module_alone()
        assert len(builds) == before + 1, change


def test_a_full_bank_refuses_the_adapter_that_would_overflow_a_table(monkeypatch):
    """A bank is full when one more adapter would make a stacked table hold more elements than a method parameter
    may (the limit every method module has): ``add_adapter`` (and ``load_adapter``, through the same bank call)
    refuses that adapter by naming the table and what sets its size, and the model and bank stay as they were."""
    multi = mixed("gpt2")
    prompts = multi.bank.prompts
    limit = prompts.numel() + prompts[0].numel() - 1  # room for the adapters there are, not one more
    monkeypatch.setattr("prompt_ops.methods.base.MAX_PARAMETER_ELEMENTS", limit)
    before = ModelState.of(multi)
    pattern = r"prompts \(adapters=4, longest prompt=5, embedding width=16\) would hold 320 elements, more than the 319"
    with pytest.raises(ValueError, match=pattern):
        multi.add_adapter("one_more", PromptTuningConfig(num_tokens=2))
    before.assert_unchanged(multi, "a refused add_adapter")
    assert multi.adapter_names == list(mixed("gpt2").adapter_names) and multi.bank.prompts is prompts
