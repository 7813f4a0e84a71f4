"""attach_many: a mixed-adapter batch against each adapter attached alone and the plain base model, the bank's
stacking, save/load of every adapter, and the refusals (each leaving the model as it was)."""

import dataclasses

import pytest
import torch

from prompt_ops.models import (
    AdapterBank,
    DePTConfig,
    LPTConfig,
    MultiAdapterModel,
    PromptTuningConfig,
    attach,
    attach_many,
    load_adapter,
)
from prompt_ops.models.bank import TABLES
from prompt_ops.ops import reference
from tests.helpers import padded_mask
from tests.models.model_state import ModelState
from tests.models.test_attach import HIDDEN, VOCAB, tiny

transformers = pytest.importorskip("transformers")

ADAPTERS = {  # ragged: m, L and r all differ; the prompt-tuning adapter sits among DePT ones
    "long": DePTConfig(num_tokens=5, rank=3, max_length=12),
    "plain": PromptTuningConfig(num_tokens=3),
    "short": DePTConfig(num_tokens=2, rank=2, max_length=9, lora_alpha=4.0),
}
ROWS = ["long", "__base__", "plain", "short", "long", "__base__"]
LENGTHS = [7, 4, 6, 7, 3, 5]  # real tokens per row, of L = 7
TOL = {"rtol": 1e-5, "atol": 1e-5}


def mixed(family: str, adapters=ADAPTERS, initializer_range: float | None = None, **kwargs) -> MultiAdapterModel:
    """A bank over a tiny model (``initializer_range`` as :func:`tiny` takes it), every adapter tensor moved off its
    init (zero B would hide the offsets)."""
    return perturbed(attach_many(tiny(family, initializer_range), adapters, **kwargs))


def perturbed(multi: MultiAdapterModel) -> MultiAdapterModel:
    """``multi`` with every adapter tensor moved off its init by seeded noise (in place)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name in multi.adapter_names:
            for tensor in multi.adapter_state_dict(name).values():
                tensor.add_(0.1 * torch.randn_like(tensor))
    return multi


def batch(side: str, lengths=LENGTHS, seq_len: int = 7):
    """Token ids, a padding mask (pads on ``side``) and token labels (-100 on the pads)."""
    torch.manual_seed(2)
    ids = torch.randint(1, VOCAB, (len(lengths), seq_len))
    mask = padded_mask(lengths, seq_len, side)
    return ids, mask, ids.masked_fill(mask == 0, -100)


def alone(multi: MultiAdapterModel, name: str):
    """Adapter ``name`` attached alone to the same base model, with the bank's (unpadded) values."""
    tuned = attach(multi.base_model, multi.bank.config(name), shared_prompt=False)
    with torch.no_grad():
        for key, param in tuned.adapter_state_dict().items():
            param.copy_(multi.adapter_state_dict(name)[key])
    return tuned


def prompt_columns(multi: MultiAdapterModel, num_prompt: int) -> slice:
    """The columns of a row's ``num_prompt`` prompt rows: the last of the slots (``"front"``) or the first."""
    first = multi.bank.num_slots - num_prompt if multi.bank.slots == "front" else 0
    return slice(first, first + num_prompt)


def label_count(family: str, labels: torch.Tensor, base: bool) -> int:
    """The loss terms a row contributes: a causal LM's plain model never predicts its first token."""
    return int((labels[:, 1:] if base and family in ("gpt2", "llama") else labels).ne(-100).sum())


def table_grad(multi, name: str, key: str, shape: torch.Size) -> torch.Tensor:
    """The gradient of adapter ``name``'s tensor ``key`` (unpadded ``shape``) in the bank's stacked parameter (zeros
    where no row reached that parameter)."""
    table = getattr(multi.bank, TABLES[type(multi.bank.config(name))][key])
    if table.grad is None:
        return torch.zeros(shape)
    return table.grad[multi.adapter_names.index(name)][tuple(slice(0, size) for size in shape)]


def assert_padding_has_no_gradient(bank: AdapterBank) -> None:
    """Every stacked parameter's gradient is exactly zero outside the adapters' unpadded tensors."""
    for table_name, table in bank.named_parameters():
        if table.grad is None:
            continue
        padding = torch.ones_like(table, dtype=torch.bool)
        for index, name in enumerate(bank.names):
            for key, view in bank.adapter_state_dict(name).items():
                if TABLES[type(bank.config(name))][key] == table_name:
                    padding[index][tuple(slice(0, size) for size in view.shape)] = False
        assert table.grad[padding].eq(0).all(), table_name


def assert_rows_equal_each_adapter_alone(multi, family: str, side: str, rows: list[str], lengths: list[int]) -> None:
    """A mixed forward and backward: each adapter row's outputs (prompt and real columns) equal its adapter alone
    on its rows, each ``"__base__"`` row's the plain model on its real tokens, the loss their label-weighted mean,
    and each adapter's gradient in the bank the gradient it gets alone from its own rows (``lengths``: each row's real
    tokens, as :func:`batch` takes them)."""
    ids, mask, labels = batch(side, lengths)
    if family == "t5":
        torch.manual_seed(3)
        labels = torch.randint(1, VOCAB, (len(rows), 4))
    out = multi(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=rows)
    out.loss.backward()
    slots, terms, total, expected = multi.bank.num_slots, 0.0, 0, {}
    for name in dict.fromkeys(rows):
        picked = [b for b, row in enumerate(rows) if row == name]
        for b in picked if name == "__base__" else []:  # the plain model on the row's real tokens
            real = mask[b].bool()
            row_labels = labels[b : b + 1] if family == "t5" else labels[b : b + 1, real]
            plain = multi.base_model(input_ids=ids[b : b + 1, real], labels=row_labels)
            torch.testing.assert_close(out.logits[b] if family == "t5" else out.logits[b, slots:][real],
                                       plain.logits[0], **TOL)  # fmt: skip
            count = label_count(family, row_labels, base=True)
            terms, total = terms + plain.loss.detach() * count, total + count
        if name == "__base__":
            continue
        tuned = alone(multi, name)
        single = tuned(input_ids=ids[picked], attention_mask=mask[picked], labels=labels[picked])
        count = label_count(family, labels[picked], base=False)
        terms, total = terms + single.loss.detach() * count, total + count
        params = tuned.adapter_state_dict()
        expected[name] = dict(zip(params, torch.autograd.grad(single.loss * count, list(params.values())), strict=True))
        m = tuned.num_prompt_rows
        assert m == multi.bank.prompt_rows(name)
        for i, b in enumerate(picked):
            if family == "t5":
                torch.testing.assert_close(out.logits[b], single.logits[i], **TOL)
                continue
            real = torch.cat([torch.ones(m, dtype=torch.bool), mask[b].bool()])
            columns = torch.cat([out.logits[b, prompt_columns(multi, m)], out.logits[b, slots:]])
            torch.testing.assert_close(columns[real], single.logits[i][real], **TOL)
    torch.testing.assert_close(out.loss, terms / total, **TOL)
    for name, grads in expected.items():
        for key, grad in grads.items():
            assert grad.ne(0).any(), (name, key)  # the comparison below means something
            torch.testing.assert_close(table_grad(multi, name, key, grad.shape), grad / total, **TOL, msg=(name, key))
    assert_padding_has_no_gradient(multi.bank)
    assert all(p.grad is None for p in multi.base_model.parameters())


CASES = [(family, side, None) for family in ("gpt2", "llama", "bert-mlm", "t5") for side in ("left", "right")]


@pytest.mark.parametrize("family, side, backend", [*CASES, ("gpt2", "left", "triton"), ("t5", "right", "triton")])
def test_each_row_equals_its_adapter_alone_and_base_rows_the_plain_model(family, side, backend):
    """Outputs at every real column, the loss and every adapter's gradient of a mixed batch equal those of each
    adapter attached alone on its rows (and of the plain model, per row, on its real tokens): mixed-batch training
    gives each adapter the gradients of its own rows alone. The default backend, and the fused kernels."""
    if backend == "triton":
        pytest.importorskip("prompt_ops.kernels.mixed_embed", reason="the mixed-adapter kernels have not landed")
    multi = mixed(family, backend=backend)
    assert_rows_equal_each_adapter_alone(multi, family, side, ROWS, LENGTHS)


@pytest.mark.parametrize(
    "family, expected", [("gpt2", "front"), ("llama", "front"), ("t5", "front"), ("bert", "after_prompt"),
                         ("bert-mlm", "after_prompt"), ("roberta", "after_prompt")],
)  # fmt: skip
def test_the_slot_layout_follows_the_model_kind(family, expected):
    """Decoder-only and encoder-decoder models get the slots in front of the prompt; encoders after it."""
    multi = attach_many(tiny(family), {"p": PromptTuningConfig(num_tokens=2)})
    assert multi.bank.slots == expected


@pytest.mark.parametrize(
    "family, side, backend",
    [("bert", "right", None), ("bert", "left", None), ("roberta", "left", None), ("bert", "left", "triton")],
)
def test_sequence_classification_with_ragged_prompts_equals_each_adapter_alone(family, side, backend):
    """A pooler reads column 0: every row's prompt starts there (slots after the prompt), and a ``"__base__"`` row's
    masked column 0 mirrors its first real token. Logits, loss and every adapter's gradient of a mixed batch with
    prompts of 5, 3 and 2 rows (m_max = 5) and base rows equal each adapter alone on its rows and the plain model on
    each base row's real tokens; token types at their fixed columns."""
    if backend == "triton":
        pytest.importorskip("prompt_ops.kernels.mixed_embed", reason="the mixed-adapter kernels have not landed")
    multi = mixed(family, backend=backend)
    ids, mask, _ = batch(side)
    types = (torch.arange(7)[None, :] >= 4).long().expand(len(ROWS), 7) * mask if family == "bert" else None
    targets = torch.tensor([0, 2, 1, 1, 2, 0])
    out = multi(input_ids=ids, attention_mask=mask, labels=targets, adapter_names=ROWS, token_type_ids=types)
    out.loss.backward()
    losses, expected = [], {}
    for b, name in enumerate(ROWS):
        row = {"attention_mask": mask[b : b + 1], "labels": targets[b : b + 1]}
        if types is not None:
            row["token_type_ids"] = types[b : b + 1]
        if name == "__base__":  # the plain model on the row's real tokens alone
            real = mask[b].bool()
            row = {key: value[:, real] if key != "labels" else value for key, value in row.items()}
            single = multi.base_model(input_ids=ids[b : b + 1, real], **row)
        else:
            tuned = alone(multi, name)
            single = tuned(input_ids=ids[b : b + 1], **row)
            grads = torch.autograd.grad(single.loss / len(ROWS), list(tuned.adapter_state_dict().values()))
            for key, grad in zip(tuned.adapter_state_dict(), grads, strict=True):
                expected[name, key] = expected.get((name, key), 0) + grad
        torch.testing.assert_close(out.logits[b], single.logits[0], **TOL)
        losses.append(single.loss.detach())
    torch.testing.assert_close(out.loss, torch.stack(losses).mean(), **TOL)
    assert {name for name, _ in expected} == set(ADAPTERS)
    for (name, key), grad in expected.items():  # mixed-batch training gives each adapter its own rows' gradients
        bank_grad = getattr(multi.bank, {"prompt": "prompts"}.get(key, key)).grad[multi.adapter_names.index(name)]
        torch.testing.assert_close(bank_grad[tuple(slice(0, size) for size in grad.shape)], grad, **TOL)


def test_the_bank_stacks_zero_padded_tensors_and_restacks_on_add_and_delete():
    multi = mixed("gpt2")
    bank = multi.bank
    values = {name: {k: v.detach().clone() for k, v in multi.adapter_state_dict(name).items()} for name in ADAPTERS}
    assert bank.names == list(ADAPTERS) and bank.num_slots == 5
    assert bank.prompts.shape == (3, 5, HIDDEN) and bank.lora_a.shape == (3, 12, 3) and bank.lora_b.shape == (3, 3, 16)
    assert bank.prompt_lengths.tolist() == [5, 3, 2]
    assert bank.scales.tolist() == pytest.approx([8 / 3**0.5, 0.0, 4 / 2**0.5])
    assert bank.prompts[1, 3:].eq(0).all() and bank.lora_a[2, 9:].eq(0).all() and bank.lora_a[2, :, 2:].eq(0).all()
    assert bank.lora_a[1].eq(0).all() and bank.lora_b[1].eq(0).all() and bank.lora_b[2, 2:].eq(0).all()
    ids, mask, _ = batch("left")
    index = bank.index(ROWS)
    assert index.tolist() == [0, -1, 1, 2, 0, -1]
    embeds, ext_mask = bank(ids, mask, index)
    expected = reference.mixed_dept_embed(
        ids, bank.embedding.weight, bank.prompts, bank.prompt_lengths, bank.lora_a, bank.lora_b, bank.scales, index,
        attention_mask=mask,
    )  # fmt: skip
    torch.testing.assert_close(embeds, expected[0], **TOL)
    assert torch.equal(ext_mask, expected[1])
    multi.delete_adapter("long")
    assert bank.names == ["plain", "short"] and bank.num_slots == 3 and bank.lora_a.shape == (2, 9, 2)
    multi.add_adapter("third", PromptTuningConfig(num_tokens=4))
    assert bank.names == ["plain", "short", "third"] and bank.prompt_lengths.tolist() == [3, 2, 4]
    for name in ("plain", "short"):  # the others keep their values, bitwise
        for key, value in multi.adapter_state_dict(name).items():
            assert torch.equal(value, values[name][key])
    only_prompts = attach_many(tiny("gpt2"), {"p": PromptTuningConfig(num_tokens=2)}).bank
    assert only_prompts.lora_a is None and only_prompts.lora_b is None and only_prompts.scales.tolist() == [0.0]
    assert {n for n, p in multi.named_parameters() if p.requires_grad} == {"bank.prompts", "bank.lora_a", "bank.lora_b"}


def test_rows_past_a_shorter_adapters_offset_table_get_no_offset_and_its_padding_no_gradient():
    """Tokens at positions 0..10 (explicit starts, as generated tokens are embedded; a forward refuses inputs
    longer than a row's adapter): past "short"'s 9 rows of ``lora_a`` (the bank's are 12 long) its tokens get no
    offset, as the reference over the zero-padded bank gives, and its padded rows 9..11 get exactly zero gradient
    (the bank passes each adapter's length, so the padding stays zero under any optimizer)."""
    multi = mixed("gpt2")
    bank = multi.bank
    assert bank.max_lengths.tolist() == [12, 0, 9]
    ids, _, _ = batch("right", lengths=[11, 11, 11], seq_len=11)
    index, starts = bank.index(["short", "long", "short"]), torch.zeros(3, dtype=torch.long)
    embeds = bank.embed_tokens(ids, starts, index)
    expected = reference.mixed_dept_embed(
        ids, bank.embedding.weight, bank.prompts, bank.prompt_lengths, bank.lora_a, bank.lora_b, bank.scales, index,
        positions=starts,
    )[0][:, bank.num_slots :]  # fmt: skip
    torch.testing.assert_close(embeds, expected, **TOL)
    embeds.square().sum().backward()
    assert bank.lora_a.grad[2, 9:].eq(0).all() and bank.lora_a.grad[2, :9, :2].ne(0).any()
    assert bank.lora_a.grad[0, 9:11].ne(0).any()  # "long" reaches its rows 9 and 10


def test_every_adapter_round_trips_through_its_folder_bitwise(tmp_path):
    multi = mixed("gpt2")
    for name in ADAPTERS:
        folder = multi.save_adapter(name, tmp_path / name)
        single = load_adapter(tiny("gpt2"), folder)  # the single-adapter format
        assert single.config == multi.bank.config(name)
        for key, value in single.adapter_state_dict().items():
            assert torch.equal(value, multi.adapter_state_dict(name)[key])
        multi.load_adapter(folder, adapter_name=f"{name}-copy")
        for key, value in multi.adapter_state_dict(f"{name}-copy").items():
            assert torch.equal(value, multi.adapter_state_dict(name)[key])
    single = attach(tiny("gpt2"), DePTConfig(num_tokens=4, rank=2, max_length=10))
    single.save_adapter(tmp_path / "single")
    from_folders = attach_many(tiny("gpt2"), {"s": tmp_path / "single", "long": str(tmp_path / "long")})
    for key, value in single.adapter_state_dict().items():
        assert torch.equal(from_folders.adapter_state_dict("s")[key], value)
    for key, value in from_folders.adapter_state_dict("long").items():
        assert torch.equal(value, multi.adapter_state_dict("long")[key])


def _narrow_adapter(folder):
    """A DePT adapter saved from a GPT-2 of width 8: another base model than the tests' width-16 one."""
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=8, n_layer=1, n_head=2, n_positions=64)
    attach(transformers.GPT2LMHeadModel(config), DePTConfig(num_tokens=2, rank=2, max_length=9)).save_adapter(folder)
    return folder


CALLS = {
    "unknown name": (
        lambda m, p: m(input_ids=torch.ones(2, 3, dtype=torch.long), adapter_names=["long", "nope"]),
        ValueError, r"adapter_names: no adapter named 'nope'; the bank holds \['long', 'plain', 'short'\]",
    ),
    "too few names": (
        lambda m, p: m(input_ids=torch.ones(2, 3, dtype=torch.long), adapter_names=["long"]),
        ValueError, r"adapter_names must name one adapter per row of input_ids \(2 rows\), got 1",
    ),
    "names as a str": (
        lambda m, p: m(input_ids=torch.ones(1, 3, dtype=torch.long), adapter_names="long"),
        TypeError, "adapter_names must be a list or tuple of adapter names, one per row, got str",
    ),
    "an int name": (
        lambda m, p: m(input_ids=torch.ones(1, 3, dtype=torch.long), adapter_names=[0]),
        TypeError, r"adapter_names must hold str adapter names, got a int \(0\)",
    ),
    "no names": (
        lambda m, p: m(input_ids=torch.ones(1, 3, dtype=torch.long)),
        TypeError, "adapter_names must be a list or tuple",
    ),
    "inputs_embeds": (
        lambda m, p: m(inputs_embeds=torch.zeros(1, 3, HIDDEN), adapter_names=["long"]),
        ValueError, "MultiAdapterModel needs input_ids",
    ),
    "duplicate add": (
        lambda m, p: m.add_adapter("plain", PromptTuningConfig(num_tokens=2)),
        ValueError, r"name: an adapter named 'plain' is already in the bank",
    ),
    "duplicate load": (
        lambda m, p: m.load_adapter(m.save_adapter("plain", p / "saved"), adapter_name="short"),
        ValueError, "adapter_name: an adapter named 'short' is already loaded",
    ),
    "base name": (
        lambda m, p: m.add_adapter("__base__", PromptTuningConfig(num_tokens=2)),
        ValueError, "name must be a non-empty str other than '__base__'",
    ),
    "LPT on a 1-layer model": (  # LPT adapters mix in (tests/models/test_mixed_late.py); this model has no k
        lambda m, p: m.add_adapter("lpt", LPTConfig(num_tokens=2)),
        ValueError, "config: LPT needs a model with at least 2 layers",
    ),
    "bad field": (
        lambda m, p: m.add_adapter("bad", DePTConfig(num_tokens=2, rank=0)),
        ValueError, "rank must be >= 1",
    ),
    "other positions": (
        lambda m, p: m.add_adapter("abs", PromptTuningConfig(num_tokens=2, positions="absolute")),
        ValueError, "config: positions = 'absolute', but .* the bank's way, positions = 'tokens'",
    ),
    "narrow adapter": (
        lambda m, p: m.load_adapter(_narrow_adapter(p / "narrow"), adapter_name="narrow"),
        ValueError, "adapter_config.json: the adapter was saved from a model with hidden size 8",
    ),
    "narrow state": (
        lambda m, p: m.bank.add("narrow", PromptTuningConfig(num_tokens=2), {"prompt": torch.zeros(2, 8)}),
        ValueError, r"state: prompt has shape \(2, 8\), the config implies \(2, 16\)",
    ),
    "missing folder": (
        lambda m, p: m.load_adapter(p / "absent", adapter_name="x"),
        ValueError, "absent/adapter_config.json: not found",
    ),
    "folder not a path": (
        lambda m, p: m.load_adapter(3, adapter_name="x"),
        TypeError, "folder must be a str or os.PathLike folder, got int",
    ),
    "unknown delete": (
        lambda m, p: m.delete_adapter("nope"),
        ValueError, r"name: no adapter named 'nope'; the bank holds \['long', 'plain', 'short'\]",
    ),
    "unknown save": (
        lambda m, p: m.save_adapter("nope", p / "out"),
        ValueError, "name: no adapter named 'nope'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CALLS))
def test_bad_calls_are_refused_by_name_and_leave_the_model_as_it_was(case, tmp_path):
    multi = mixed("gpt2")
    call, error, pattern = CALLS[case]
    before, names = ModelState.of(multi), multi.adapter_names
    params = {name: param for name, param in multi.named_parameters()}
    with pytest.raises(error, match=pattern):
        call(multi, tmp_path)
    before.assert_unchanged(multi, case)
    assert multi.adapter_names == names
    assert all(param is params[name] for name, param in multi.named_parameters())  # not re-stacked


def test_deleting_the_last_adapter_is_refused():
    multi = attach_many(tiny("gpt2"), {"only": PromptTuningConfig(num_tokens=2)})
    with pytest.raises(ValueError, match="name: 'only' is the model's only adapter"):
        multi.delete_adapter("only")
    assert multi.adapter_names == ["only"]


@pytest.mark.parametrize(
    "adapters, error, pattern",
    [
        ({}, ValueError, "adapters must name at least one adapter"),
        ([("a", PromptTuningConfig())], TypeError, "adapters must be a mapping of adapter names"),
        ({"__base__": PromptTuningConfig(num_tokens=2)}, ValueError, "adapters' keys must be a non-empty str other"),
        ({3: PromptTuningConfig(num_tokens=2)}, TypeError, "adapters' keys must be a str"),
        ({"a": {"num_tokens": 2}}, TypeError, r"adapters\['a'\] must be an adapter folder .* got dict"),
        ({"a": PromptTuningConfig(num_tokens=2), "b": LPTConfig()}, ValueError, r"adapters\['b'\]: LPT needs a model"),
        ({"a": "/nonexistent/adapter"}, ValueError, "/nonexistent/adapter/adapter_config.json: not found"),
    ],
)
def test_a_refused_attach_many_leaves_the_model_as_it_was(adapters, error, pattern):
    model = tiny("gpt2")
    before = ModelState.of(model)
    with pytest.raises(error, match=pattern):
        attach_many(model, adapters)
    before.assert_unchanged(model)
    assert all(p.requires_grad for p in model.parameters())


def test_an_adapter_bank_on_its_own():
    """The bank is usable without a model: add with a state, index, forward, config copies."""
    embedding = torch.nn.Embedding(VOCAB, HIDDEN)
    with pytest.raises(ValueError, match=r"slots must be one of \('front', 'after_prompt'\).*'middle'"):
        AdapterBank(embedding, slots="middle")
    assert embedding.weight.requires_grad  # a refused bank leaves the embedding as it was
    bank = AdapterBank(embedding)
    ids = torch.tensor([[3, 1, 4], [1, 5, 9]])
    embeds, mask = bank(ids, None, torch.tensor([-1, -1]))  # empty: the plain tokens, no prompt column
    assert torch.equal(embeds, embedding.weight[ids]) and mask.tolist() == [[1] * 3] * 2
    given = torch.tensor([[0, 1, 1], [1, 1, 0]])
    assert bank(ids, given, torch.tensor([-1, -1]))[1] is given
    with pytest.raises(ValueError, match=r"adapter_index must be in \[-1, 0\) .*N = 0 adapters.*found 0"):
        bank(ids, None, torch.tensor([-1, 0]))
    state = {"prompt": torch.randn(2, HIDDEN)}
    bank.add("p", PromptTuningConfig(num_tokens=2), state)
    assert torch.equal(bank.adapter_state_dict("p")["prompt"], state["prompt"])
    config = bank.config("p")
    config.num_tokens = 9
    assert bank.config("p") == dataclasses.replace(config, num_tokens=2)  # a copy
    embeds, mask = bank(torch.ones(2, 3, dtype=torch.long), None, bank.index(("p", "__base__")))
    assert embeds.shape == (2, 5, HIDDEN) and mask.tolist() == [[1] * 5, [0, 0, 1, 1, 1]]
    assert not embedding.weight.requires_grad
    bank.delete("p")  # the last adapter may go: empty again
    assert bank.names == [] and bank.num_slots == 0 and bank.prompts is None and bank.prompt_lengths is None
    assert torch.equal(
        bank.embed_tokens(ids, torch.zeros(2, dtype=torch.long), torch.tensor([-1, -1])), embedding.weight[ids]
    )


# ---------------------------------------------------------------------------------------------------------------
# generate: each row generates what its adapter alone (or the plain model) generates
# ---------------------------------------------------------------------------------------------------------------

GREEDY = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
BEAMS = {"num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 4, "do_sample": False, "pad_token_id": 0,
         "eos_token_id": None}  # fmt: skip


def generating(family: str, backend: str | None = None, initializer_range: float | None = None) -> MultiAdapterModel:
    """:func:`mixed` with large DePT offsets: a generation that dropped them after the prefill, or gave a row another
    row's, would pick other tokens (``test_generated_tokens_get_their_own_rows_treatment`` checks it does)."""
    multi = mixed(family, backend=backend, initializer_range=initializer_range)
    with torch.no_grad():
        multi.bank.lora_b.mul_(10)
    return multi


def generated_alone(multi: MultiAdapterModel, name: str, row: torch.Tensor, **kwargs) -> torch.Tensor:
    """What adapter ``name`` attached alone (``"__base__"``: the plain model) generates from the ids ``row (1, n)``."""
    model = multi.base_model if name == "__base__" else alone(multi, name)
    return model.generate(row, **kwargs)


@pytest.mark.parametrize("family, backend", [("gpt2", None), ("llama", None), ("gpt2", "triton")])
def test_greedy_generation_of_each_row_equals_its_adapter_alone(family, backend):
    """A left-padded batch of ragged adapters and base rows: each row's new tokens are those its adapter generates
    alone from the row's real tokens (the plain model's for base rows). The "short" row's 7 tokens and 6 new ones
    run past its 9 offset rows, which stop there as they do alone."""
    if backend == "triton":
        pytest.importorskip("prompt_ops.kernels.mixed_embed", reason="the mixed-adapter kernels have not landed")
    multi = generating(family, backend)
    ids, mask, _ = batch("left")
    generated = multi.generate(ids, attention_mask=mask, adapter_names=ROWS, **GREEDY)
    assert generated.shape == (len(ROWS), 7 + 6) and torch.equal(generated[:, :7], ids)
    for b, name in enumerate(ROWS):
        real = mask[b].bool()
        expected = generated_alone(multi, name, ids[b : b + 1, real], **GREEDY)
        assert torch.equal(generated[b, 7:], expected[0, int(real.sum()) :]), (b, name)
    assert multi.base_model.get_input_embeddings() is multi.bank.embedding  # restored


def test_generated_tokens_get_their_own_rows_treatment(monkeypatch):
    """Guard for the test above: plain lookups after the prefill change every DePT row's tokens and no other row's
    (prompt-tuning and base rows get the plain token)."""
    multi = generating("gpt2")
    ids, mask, _ = batch("left")
    treated = multi.generate(ids, attention_mask=mask, adapter_names=ROWS, **GREEDY)
    monkeypatch.setattr(multi.bank, "embed_tokens", lambda input_ids, start, index: multi.bank.embedding(input_ids))
    plain = multi.generate(ids, attention_mask=mask, adapter_names=ROWS, **GREEDY)
    for b, name in enumerate(ROWS):
        assert torch.equal(treated[b], plain[b]) == (name in ("plain", "__base__")), (b, name)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_beams_and_returned_sequences_keep_each_rows_adapter(family):
    """``num_return_sequences`` copies of each row come back consecutively behind its input ids; copy ``j`` of row
    ``b`` is beam ``j`` of that row's adapter alone (each copy decodes with its row's adapter and positions)."""
    multi = generating(family)
    ids, mask, _ = batch("left")
    generated = multi.generate(ids, attention_mask=mask, adapter_names=ROWS, **BEAMS)
    assert generated.shape == (2 * len(ROWS), 7 + 4)
    assert torch.equal(generated[:, :7], ids.repeat_interleave(2, dim=0))
    for b, name in enumerate(ROWS):
        real = mask[b].bool()
        expected = generated_alone(multi, name, ids[b : b + 1, real], **BEAMS)
        assert torch.equal(generated[2 * b : 2 * b + 2, 7:], expected[:, int(real.sum()) :]), (b, name)


def test_generation_continues_user_position_ids_behind_each_rows_prompt():
    """User positions are shifted behind each row's own prompt at prefill and continue one by one from each row's
    last, as each adapter alone (and the plain model) continues them."""
    multi = generating("gpt2", initializer_range=0.3)  # outputs that depend on the positions
    names = ["short", "__base__", "long"]
    torch.manual_seed(4)
    ids = torch.randint(1, VOCAB, (3, 5))
    position_ids = torch.tensor([[30, 31, 32, 33, 34], [0, 4, 8, 12, 16], [20, 22, 24, 26, 28]])
    generated = multi.generate(ids, adapter_names=names, position_ids=position_ids, **GREEDY)
    default = multi.generate(ids, adapter_names=names, **GREEDY)
    for b, name in enumerate(names):
        expected = generated_alone(multi, name, ids[b : b + 1], position_ids=position_ids[b : b + 1], **GREEDY)
        assert torch.equal(generated[b], expected[0]), (b, name)
        assert not torch.equal(generated[b], default[b]), (b, name)  # the positions change the tokens


def test_t5_greedy_generation_of_each_row_equals_its_adapter_alone():
    """The prompt goes to the encoder: each row's decoder tokens are its adapter's alone (the plain model's)."""
    multi = generating("t5")
    ids, mask, _ = batch("right")
    greedy = {"max_new_tokens": 5, "do_sample": False, "eos_token_id": None}
    generated = multi.generate(ids, attention_mask=mask, adapter_names=ROWS, **greedy)
    assert generated.shape == (len(ROWS), 1 + 5)
    for b, name in enumerate(ROWS):
        expected = generated_alone(multi, name, ids[b : b + 1, mask[b].bool()], **greedy)
        assert torch.equal(generated[b], expected[0]), (b, name)


GENERATE_CALLS = {
    "unknown name": (
        {"adapter_names": ["long", "nope"]}, ValueError,
        r"adapter_names: no adapter named 'nope'; the bank holds \['long', 'plain', 'short'\]",
    ),
    "too few names": (
        {"adapter_names": ["long"]}, ValueError,
        r"adapter_names must name one adapter per row of input_ids \(2 rows\), got 1",
    ),
    "no names": ({}, TypeError, "adapter_names must be a list or tuple"),
    "names as a str": ({"adapter_names": "long"}, TypeError, "adapter_names must be a list or tuple"),
    "inputs_embeds": (
        {"adapter_names": ["long", "plain"], "inputs_embeds": torch.zeros(2, 3, HIDDEN)}, ValueError,
        "MultiAdapterModel.generate builds inputs_embeds from input_ids",
    ),
    "no room for a new token": (
        {"adapter_names": ["long", "plain"], "max_new_tokens": None, "max_length": 8}, ValueError,
        "max_length counts the 5 prompt rows and input_ids' 3 tokens, so it must be above 8",
    ),
    "past the position table": (
        {"adapter_names": ["long", "plain"], "max_new_tokens": 60}, ValueError,
        "5 prompt rows, input_ids' 3 tokens and max_new_tokens = 60 .* make 67 positions",
    ),
    "refused inside transformers": (  # after the decode embedding is swapped in: it must be put back
        {"adapter_names": ["long", "plain"], "num_beams": 2, "num_return_sequences": 3}, ValueError,
        "num_return_sequences",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(GENERATE_CALLS))
def test_bad_generate_calls_are_refused_by_name_and_leave_the_model_as_it_was(case):
    multi = mixed("gpt2")
    kwargs, error, pattern = GENERATE_CALLS[case]
    before, base_before = ModelState.of(multi), ModelState.of(multi.base_model)
    with pytest.raises(error, match=pattern):
        multi.generate(torch.ones(2, 3, dtype=torch.long), **{"max_new_tokens": 2, "pad_token_id": 0, **kwargs})
    before.assert_unchanged(multi, case)
    base_before.assert_unchanged(multi.base_model, case)
