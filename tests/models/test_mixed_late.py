"""LPT adapters in a mixed-adapter batch: each LPT row against its adapter attached alone
(:func:`prompt_ops.models.attach` with the same tensors, on a fresh copy of the base model), the other rows against
theirs (a DePT or prompt-tuning adapter alone, the plain model for ``"__base__"``): outputs, loss terms, every
adapter's gradients, greedy generation; save/load; the refusals leave the model as it was."""

import pytest
import torch

from prompt_ops.models import DePTConfig, LPTConfig, PromptTuningConfig, attach, attach_many, load_adapter
from tests.helpers import padded_mask
from tests.models.model_state import ModelState
from tests.models.test_lpt import VOCAB, tiny
from tests.models.test_multi_adapter import perturbed

transformers = pytest.importorskip("transformers")

ADAPTERS = {  # ragged LPT prompts (n 3 and 2), generators (NPG and APPG, h 8 and 6), and a DePT adapter
    "npg": LPTConfig(layer=2, num_tokens=3, hidden_size=8, dropout=0.0),
    "dept": DePTConfig(num_tokens=4, rank=2, max_length=12),
    "appg": LPTConfig(layer=2, num_tokens=2, hidden_size=6, mode="pool", dropout=0.0),
}
ROWS = ["npg", "__base__", "dept", "appg", "npg", "appg"]
LATE_ROWS = ["npg", "__base__", "appg", "appg", "npg", "__base__"]  # a model of LPT adapters only (an empty bank)
LENGTHS = [7, 4, 6, 7, 3, 5]  # real tokens per row, of L = 7
TOL = {"rtol": 1e-5, "atol": 1e-5}


def mixed(family: str, adapters=ADAPTERS, backend=None):
    """The adapters over a tiny 4-layer model, every tensor moved off its init."""
    return perturbed(attach_many(tiny(family, head=True), adapters, backend=backend))


def alone(multi, family: str, name: str):
    """Adapter ``name`` attached alone to a fresh copy of the base model (the same weights), with its values."""
    config = multi.late.config(name) if name in multi.late.names else multi.bank.config(name)
    tuned = attach(tiny(family, head=True), config, backend=multi.bank.backend, shared_prompt=False)
    with torch.no_grad():
        for key, param in tuned.adapter_state_dict().items():
            param.copy_(multi.adapter_state_dict(name)[key])
    return tuned


def batch(side: str, lengths=LENGTHS, seq_len: int = 7):
    torch.manual_seed(2)
    ids = torch.randint(2, VOCAB, (len(lengths), seq_len))
    return ids, padded_mask(lengths, seq_len, side)


def causal_labels(ids, mask):
    """Token labels: each row's first two real tokens are its source (-100), the rest targets; pads -100."""
    labels = ids.masked_fill(mask == 0, -100)
    first = (mask.cumsum(1) <= 2) & (mask != 0)
    return labels.masked_fill(first, -100)


def alone_rows(multi, family: str, name: str, ids, mask, labels):
    """``(logits at each row's real columns, loss terms, number of terms, gradients of the summed terms)`` of
    adapter ``name`` alone (the plain model for ``"__base__"``) on ``ids``' rows. A causal LM runs the padded rows as
    a batch (the adapters number positions from each row's first real token); the plain model, and BERT (whose
    pooler reads column 0, a pad under left padding), each row's real tokens alone."""
    tuned = alone(multi, family, name) if name != "__base__" else tiny(family, head=True)
    params = tuned.adapter_state_dict() if name != "__base__" else {}
    causal = family != "bert"
    if causal and name != "__base__":
        calls = [(ids, mask, labels)]
    else:  # each row's real tokens alone
        calls = [(ids[b : b + 1, mask[b].bool()], None, labels[b : b + 1, mask[b].bool()] if causal else
                  labels[b : b + 1]) for b in range(len(ids))]  # fmt: skip
    logits, terms, count = [], 0.0, 0
    for row_ids, row_mask, row_labels in calls:
        single = tuned(input_ids=row_ids, attention_mask=row_mask, labels=row_labels)
        start = getattr(tuned, "num_prompt_rows", 0)  # prompt tuning's columns come first
        for i in range(len(row_ids)):
            logits.append(single.logits[i, start:][row_mask[i].bool()] if row_mask is not None else single.logits[i])
        shifted = row_labels[:, 1:] if name == "__base__" and causal else row_labels  # never predicts token 0
        terms, count = terms + single.loss * int(shifted.ne(-100).sum()), count + int(shifted.ne(-100).sum())
    grads = dict(zip(params, torch.autograd.grad(terms, list(params.values())), strict=True)) if params else {}
    return logits, terms.detach(), count, grads


def late_only(family: str, folder):
    """A model of LPT adapters only: ``"npg"`` from a config, ``"appg"`` from an adapter folder saved alone."""
    single = attach(tiny(family, head=True), ADAPTERS["appg"])
    with torch.no_grad():
        for param in single.adapter_state_dict().values():
            param.add_(0.1 * torch.randn_like(param))
    single.save_adapter(folder)
    return mixed(family, {"npg": ADAPTERS["npg"], "appg": folder})


@pytest.mark.parametrize(
    "family, side, only_lpt",
    [(family, side, False) for family in ("gpt2", "llama", "bert") for side in ("left", "right")]
    + [("gpt2", "left", True), ("bert", "left", True)],
)
def test_each_row_equals_its_adapter_alone(family, side, only_lpt, tmp_path):
    """Logits at every real column, the loss and every adapter's gradients of a mixed batch equal each adapter's
    alone on its rows (the plain model for ``"__base__"``): LPT rows, DePT rows and base rows together; and on a
    model of LPT adapters only (config and folder; an empty bank, no prompt column at the input)."""
    multi = late_only(family, tmp_path / "appg") if only_lpt else mixed(family)
    names = LATE_ROWS if only_lpt else ROWS
    ids, mask = batch(side)
    causal = family != "bert"
    labels = causal_labels(ids, mask) if causal else torch.tensor([0, 1, 2, 1, 0, 2])  # BERT: one class per row
    out = multi(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=names)
    out.loss.backward()
    slots = multi.bank.num_slots
    assert slots == (0 if only_lpt else 4)
    terms, total, expected = 0.0, 0, {}
    for name in [*multi.adapter_names, "__base__"]:
        rows = [b for b, row in enumerate(names) if row == name]
        logits, loss_terms, count, grads = alone_rows(multi, family, name, ids[rows], mask[rows], labels[rows])
        for b, want in zip(rows, logits, strict=True):
            got = out.logits[b, slots:][mask[b].bool()] if causal else out.logits[b]
            torch.testing.assert_close(got, want, **TOL, msg=f"{name} row {b}")
        terms, total, expected[name] = terms + loss_terms, total + count, grads
    torch.testing.assert_close(out.loss, terms / total, **TOL)
    for name, grads in expected.items():  # the mixed loss is the mean over every row's terms
        assert name == "__base__" or any(bool(grad.abs().max() > 0) for grad in grads.values())
        for key, grad in grads.items():
            torch.testing.assert_close(_grad_view(multi, name, key) * total, grad, **TOL, msg=f"{name}.{key}")


def _grad_view(multi, name: str, key: str) -> torch.Tensor:
    """The gradient of adapter ``name``'s tensor ``key``: the unpadded slice of its stacked parameter's gradient."""
    view = multi.adapter_state_dict(name)[key]
    storage = view.untyped_storage().data_ptr()
    (table,) = [param for param in multi.parameters() if param.untyped_storage().data_ptr() == storage]
    return table.grad.as_strided(view.shape, view.stride(), view.storage_offset())


@pytest.mark.parametrize("side, only_lpt", [("left", False), ("right", False), ("left", True)])
def test_greedy_generate_per_row_equals_each_adapter_alone(side, only_lpt, tmp_path):
    """Each row of a mixed ``generate`` (KV cache: the LPT rows' prompt in the upper layers' cache) gives the tokens
    its adapter alone gives from that row; a ``"__base__"`` row the plain model's from its real tokens (left padding)
    and what it gives in a batch without LPT rows. Also on a model of LPT adapters only (an empty bank)."""
    multi = late_only("gpt2", tmp_path / "appg") if only_lpt else mixed("gpt2")
    names = LATE_ROWS if only_lpt else ROWS
    ids, mask = batch(side)
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    out = multi.generate(input_ids=ids, attention_mask=mask, adapter_names=names, **settings)
    without = [name if name == "dept" else "__base__" for name in names]  # no LPT row: the hooks do nothing
    unhooked = multi.generate(input_ids=ids, attention_mask=mask, adapter_names=without, **settings)
    for b, name in enumerate(names):
        if name == "__base__":
            real = mask[b].bool()
            plain = tiny("gpt2", head=True).generate(input_ids=ids[b : b + 1, real], **settings)
            if side == "left":  # right-padded, the new tokens follow the pads: no plain call on real tokens has that
                assert torch.equal(out[b, ids.shape[1] :], plain[0, real.sum() :]), b
            assert torch.equal(out[b], unhooked[b]), b
            continue
        want = alone(multi, "gpt2", name).generate(input_ids=ids[b : b + 1], attention_mask=mask[b : b + 1], **settings)
        assert torch.equal(out[b], want[0]), (b, name)


def test_save_and_load_an_lpt_adapter(tmp_path):
    """An LPT adapter saved from the mixed model loads alone (load_adapter) and back into a mixed model, bitwise."""
    multi = mixed("gpt2")
    multi.save_adapter("npg", tmp_path)
    single = load_adapter(tiny("gpt2", head=True), tmp_path)
    for key, tensor in single.adapter_state_dict().items():
        assert torch.equal(tensor, multi.adapter_state_dict("npg")[key])
    multi.load_adapter(tmp_path, adapter_name="again")
    for key, tensor in multi.adapter_state_dict("again").items():
        assert torch.equal(tensor, multi.adapter_state_dict("npg")[key])
    ids, mask = batch("left")
    out = multi(input_ids=ids, attention_mask=mask, adapter_names=["again"] * len(ids)).logits
    ref = multi(input_ids=ids, attention_mask=mask, adapter_names=["npg"] * len(ids)).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    multi.delete_adapter("again")
    assert multi.adapter_names == ["dept", "npg", "appg"]


def test_refusals_leave_the_model_unchanged():
    """A second insertion layer and an LPT adapter with another position convention are refused by name,
    attach_many's before the model is touched, add_adapter's with the mixed model as it was."""
    model = tiny("gpt2", head=True)
    before = ModelState.of(model)
    with pytest.raises(ValueError, match=r"LPT adapter 'late3' has layer = 3, but 'npg' inserts .* after layer 2"):
        attach_many(model, {**ADAPTERS, "late3": LPTConfig(layer=3, num_tokens=2, hidden_size=4)})
    with pytest.raises(ValueError, match="positions = 'absolute'"):
        attach_many(model, {"dept": ADAPTERS["dept"], "x": LPTConfig(layer=2, positions="absolute")})
    before.assert_unchanged(model)
    multi = mixed("gpt2")
    state = ModelState.of(multi)
    with pytest.raises(ValueError, match="'late3' has layer = 3"):
        multi.add_adapter("late3", LPTConfig(layer=3, num_tokens=2, hidden_size=4))
    with pytest.raises(ValueError, match="already loaded"):
        multi.add_adapter("npg", LPTConfig(layer=2))
    with pytest.raises(ValueError, match="already has an LPT attached"):
        attach(multi.base_model, LPTConfig(layer=2))
    state.assert_unchanged(multi)
    assert multi.adapter_names == ["dept", "npg", "appg"]


def test_a_batch_without_lpt_rows_is_untouched_by_the_hooks_and_pt_rows_mix_with_lpt():
    """Without LPT rows the stack runs as before (the shared prompt pass included); a prompt-tuning adapter added at
    runtime mixes with the LPT rows."""
    multi = mixed("gpt2")
    ids, mask = batch("right")
    rows = ["dept", "__base__", "dept", "__base__", "dept", "dept"]
    with torch.no_grad():
        got = multi(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
        multi.late.delete("npg"), multi.late.delete("appg")  # no hooks left
        want = multi(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    multi = mixed("gpt2")
    multi.add_adapter("pt", PromptTuningConfig(num_tokens=5))
    rows = ["pt", "npg", "pt", "appg", "dept", "npg"]
    out = multi(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
    slots = multi.bank.num_slots
    for b, name in enumerate(rows):
        tuned = alone(multi, "gpt2", name)
        single = tuned(input_ids=ids[b : b + 1], attention_mask=mask[b : b + 1]).logits
        real = mask[b].bool()
        start = getattr(tuned, "num_prompt_rows", 0)
        torch.testing.assert_close(out[b, slots:][real], single[0, start:][real], **TOL)


def _assert_causal_rows_alone(multi, names, ids, mask, out, **alone_kwargs):
    """``out`` (a GPT-2 mixed call's logits) at each row's real columns equals its adapter's alone on its padded rows
    (``alone_kwargs``: per-row tensors, given to the adapter alone for its rows), the plain model's on a
    ``"__base__"`` row's real tokens."""
    for name in sorted(set(names)):
        rows = [b for b, row in enumerate(names) if row == name]
        for b in rows:
            real = mask[b].bool()
            if name == "__base__":
                want = tiny("gpt2", head=True)(input_ids=ids[b : b + 1, real]).logits[0]
            else:
                tuned = alone(multi, "gpt2", name)
                extra = {key: value[b : b + 1] for key, value in alone_kwargs.items()}
                single = tuned(input_ids=ids[b : b + 1], attention_mask=mask[b : b + 1], **extra).logits
                want = single[0, getattr(tuned, "num_prompt_rows", 0) :][real]
            torch.testing.assert_close(out[b, multi.bank.num_slots :][real], want, **TOL, msg=f"{name} row {b}")


def test_the_bank_s_last_adapter_goes_while_lpt_adapters_remain():
    """Deleting the bank's last adapter leaves an empty bank (no prompt column) and LPT rows that still equal their
    adapters alone; the model's last adapter cannot go; a bank adapter added again mixes with the LPT rows."""
    multi = mixed("gpt2")
    ids, mask = batch("left")
    multi.delete_adapter("dept")
    assert multi.adapter_names == ["npg", "appg"] and multi.bank.num_slots == 0 and multi.bank.prompts is None
    with torch.no_grad():
        _assert_causal_rows_alone(multi, LATE_ROWS, ids, mask, multi(input_ids=ids, attention_mask=mask,
                                  adapter_names=LATE_ROWS).logits)  # fmt: skip
    multi.delete_adapter("appg")
    state = ModelState.of(multi)
    with pytest.raises(ValueError, match="name: 'npg' is the model's only adapter and a mixed-adapter model keeps"):
        multi.delete_adapter("npg")
    state.assert_unchanged(multi)
    multi.add_adapter("pt", PromptTuningConfig(num_tokens=3))
    with torch.no_grad():
        multi.bank.prompts.normal_()
        rows = ["pt", "npg", "__base__", "npg", "pt", "pt"]
        _assert_causal_rows_alone(multi, rows, ids, mask, multi(input_ids=ids, attention_mask=mask,
                                  adapter_names=rows).logits)  # fmt: skip


def test_source_lengths_set_each_lpt_row_s_source_as_alone():
    """``source_lengths`` gives each LPT row the source it gives LPT alone (over the labels' source; the other rows'
    values are not read), and changes what those rows get."""
    multi = mixed("gpt2")
    ids, mask = batch("left")
    labels = causal_labels(ids, mask)
    lengths = torch.tensor([5, 0, -3, 7, 1, 4])  # rows 1 and 2 (base, DePT): not read
    with torch.no_grad():
        out = multi(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=ROWS, source_lengths=lengths)
        _assert_causal_rows_alone(multi, ROWS, ids, mask, out.logits, labels=labels, source_lengths=lengths)
        from_labels = multi(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=ROWS).logits
    assert not torch.allclose(out.logits[0], from_labels[0])  # row 0: 5 source tokens, not the labels' 2


def test_source_lengths_refusals_leave_the_model_as_it_was():
    """``source_lengths`` is refused as LPT alone refuses it (a bidirectional model, a wrong type, dtype, shape or
    value on an LPT row), for a batch without LPT rows, and by generate; the model is left as it was."""
    multi = mixed("gpt2")
    ids, mask = batch("left")
    state = ModelState.of(multi)
    lengths = torch.tensor([2, 1, 1, 2, 2, 2])
    cases = [
        ({"source_lengths": lengths, "adapter_names": ["dept", "__base__"] * 3}, ValueError,
         r"no row of this batch uses an LPT adapter \(\['npg', 'appg'\]\)"),
        ({"source_lengths": lengths[:4]}, ValueError, r"source_lengths must have shape \(B,\) = \(6,\), got \(4,\)"),
        ({"source_lengths": lengths.float()}, TypeError, "source_lengths must be an int64 or int32 tensor"),
        ({"source_lengths": [2] * 6}, TypeError, "source_lengths must be a torch.Tensor"),
        ({"source_lengths": torch.tensor([2, 1, 1, 2, 4, 2])}, ValueError,
         r"source_lengths\[4\] = 4, but row 4 has 3 real tokens"),
        ({"source_lengths": torch.tensor([0, 1, 1, 2, 2, 2])}, ValueError, r"source_lengths\[0\] = 0"),
    ]  # fmt: skip
    for kwargs, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            multi(input_ids=ids, attention_mask=mask, **{"adapter_names": ROWS, **kwargs})
    with pytest.raises(ValueError, match="MultiAdapterModel.generate does not take source_lengths"):
        multi.generate(input_ids=ids, attention_mask=mask, adapter_names=ROWS, source_lengths=lengths)
    state.assert_unchanged(multi)
    bank_only = attach_many(tiny("gpt2", head=True), {"dept": ADAPTERS["dept"]})
    with pytest.raises(ValueError, match=r"no row of this batch uses an LPT adapter \(the model has none\)"):
        bank_only(input_ids=ids, attention_mask=mask, adapter_names=["dept"] * 6, source_lengths=lengths)
    bert = mixed("bert")
    single = alone(bert, "bert", "npg")
    with pytest.raises(ValueError, match="source_lengths applies to causal models") as alone_error:
        single(input_ids=ids, attention_mask=mask, source_lengths=lengths)
    with pytest.raises(ValueError, match="source_lengths applies to causal models") as mixed_error:
        bert(input_ids=ids, attention_mask=mask, adapter_names=ROWS, source_lengths=lengths)
    assert str(mixed_error.value) == str(alone_error.value)


def test_t5_rows_equal_each_adapter_alone():
    """T5 (the LPT prompt inserted in the encoder stack): each row's decoder logits, the loss and every adapter's
    gradients equal its adapter's alone on its rows (the plain model for ``"__base__"``), left padding."""
    multi = mixed("t5")
    ids, mask = batch("left")
    labels = torch.randint(1, VOCAB, (len(ids), 3))
    out = multi(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=ROWS)
    out.loss.backward()
    for name in [*ADAPTERS, "__base__"]:
        rows = [b for b, row in enumerate(ROWS) if row == name]
        tuned = alone(multi, "t5", name) if name != "__base__" else tiny("t5", head=True)
        single = tuned(input_ids=ids[rows], attention_mask=mask[rows], labels=labels[rows])
        torch.testing.assert_close(out.logits[rows], single.logits, **TOL, msg=name)
        if name == "__base__":
            continue
        params = tuned.adapter_state_dict()
        grads = torch.autograd.grad(single.loss * len(rows) / len(ROWS), list(params.values()))  # the batch mean
        assert any(bool(grad.abs().max() > 0) for grad in grads)
        for key, grad in zip(params, grads, strict=True):
            torch.testing.assert_close(_grad_view(multi, name, key), grad, **TOL, msg=f"{name}.{key}")


def test_triton_backend_rows_equal_each_adapter_alone():
    """The triton backend (the bank's mixed op and LPT's generators): each row's logits equal its adapter's alone
    on the same backend, and the LPT rows' gradients too."""
    multi = mixed("gpt2", backend="triton")
    names = ["npg", "dept", "appg", "__base__"]
    ids, mask = batch("right", lengths=[5, 3, 4, 2], seq_len=5)
    out = multi(input_ids=ids, attention_mask=mask, adapter_names=names).logits
    _assert_causal_rows_alone(multi, names, ids, mask, out.detach())
    out[0, multi.bank.num_slots :][mask[0].bool()].square().sum().backward()  # row 0 only: the npg adapter's
    tuned = alone(multi, "gpt2", "npg")
    single = tuned(input_ids=ids[:1], attention_mask=mask[:1]).logits
    params = tuned.adapter_state_dict()
    grads = torch.autograd.grad(single.square().sum(), list(params.values()))
    for key, grad in zip(params, grads, strict=True):
        torch.testing.assert_close(_grad_view(multi, "npg", key), grad, **TOL, msg=key)
