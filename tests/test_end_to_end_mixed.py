"""End-to-end mixed-adapter measurement (``prompt_ops.end_to_end_mixed``) on a tiny GPT-2: the rows record what
ran, the loop baseline really runs one call per adapter on that adapter's rows, the model is left as it was, bad
input is refused before the model is touched, and the report table is rendered from the rows."""

import dataclasses

import pytest
import torch
import transformers

from bench.report import render_end_to_end_mixed, render_readme
from prompt_ops.end_to_end_mixed import PATHS, MixedEndToEndRow, measure_mixed_adapters, mixed_paths
from prompt_ops.models import DePTConfig, PromptTuningConfig

MIX = {
    "wide": DePTConfig(num_tokens=6, rank=3, max_length=16),
    "narrow": DePTConfig(num_tokens=3, rank=5, max_length=16),
    "plain": PromptTuningConfig(num_tokens=2),
}  # batch 4: rows 0 and 3 on "wide", row 1 on "narrow", row 2 on "plain"


def tiny(family: str = "gpt2"):
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=100, n_embd=16, n_layer=1, n_head=2, bos_token_id=1,
                                         eos_token_id=1)  # fmt: skip
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)  # fmt: skip
    return transformers.BertModel(config).eval()


def test_rows_record_what_ran_and_leave_the_model_as_it_was():
    model = tiny()
    probe = torch.arange(10)[None]
    before = model(input_ids=probe).logits
    rows = measure_mixed_adapters(model, "tiny-gpt2", MIX, "wide", batch=4, seq_len=5, repeat=2)
    assert [r.path for r in rows] == list(PATHS)
    mixed, one, loop = rows
    assert mixed.adapters == loop.adapters == "wide (dept m=6 r=3), narrow (dept m=3 r=5), plain (prompt_tuning m=2)"
    assert one.adapters == "wide (dept m=6 r=3)"
    assert [(r.distinct_adapters, r.model_calls) for r in rows] == [(3, 1), (1, 1), (3, 3)]
    assert all(r.shared_prompt for r in rows)  # every prompt pass computed once, then only input tokens ran
    assert loop.same_tokens_as_mixed is True and mixed.same_tokens_as_mixed is one.same_tokens_as_mixed is None
    for r in rows:
        assert (r.model, r.batch, r.seq_len, r.backend, r.dtype, r.decode_tokens) == (
            "tiny-gpt2", 4, 5, "torch", "float32", 8)  # fmt: skip
        assert 0 < r.prefill_p20_ms <= r.prefill_ms <= r.prefill_p80_ms
        assert r.prefill_tokens_per_s == pytest.approx(4 * 5 / r.prefill_ms * 1e3)
        assert r.decode_ms_per_token != 0
    assert torch.equal(model(input_ids=probe).logits, before) and not model.training
    assert all(p.requires_grad for p in model.parameters())  # attaching froze it; the flags are back
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_the_loop_runs_each_adapter_on_its_own_rows():
    """One base-model call per adapter of the batch, each on that adapter's rows only (counted by a hook on the
    model, which also records each call's batch); each row's next-token logits are what the mixed batch gives that
    row; the mixed and one-adapter paths run the whole batch in one call."""
    model = tiny()
    ids = torch.randint(1, 100, (4, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 5, dtype=torch.int64)
    batches = []

    def record(module, args, kwargs):
        batches.append(kwargs["inputs_embeds"].shape[0])

    with torch.no_grad(), mixed_paths(model, MIX, "wide", ids, mask, None) as paths:
        for path in paths.values():
            path.prefill()  # keeps the prompt passes
        handle = model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            calls = {}
            for name, path in paths.items():
                batches.clear()
                out = path.prefill()
                calls[name] = out, list(batches)
        finally:
            handle.remove()
        loop_tokens = paths["loop"].generate(2)
        mixed_tokens = paths["mixed"].generate(2)
    (mixed_out, mixed_batches), (one_out, one_batches), (loop_outs, loop_batches) = calls.values()
    assert mixed_batches == one_batches == [4] and loop_batches == [2, 1, 1]
    loop_logits = torch.empty_like(mixed_out.logits)
    for out, rows in zip(loop_outs, ([0, 3], [1], [2]), strict=True):
        loop_logits[rows] = out.logits
    torch.testing.assert_close(loop_logits, mixed_out.logits)
    torch.testing.assert_close(one_out.logits[[0, 3]], mixed_out.logits[[0, 3]])
    assert not torch.allclose(one_out.logits[1:3], mixed_out.logits[1:3])  # the adapters differ
    assert torch.equal(loop_tokens, mixed_tokens) and loop_tokens.shape == (4, 7)


@pytest.mark.parametrize(
    "change, error, pattern",
    [
        ({"model": "bert"}, ValueError, "model must be a causal LM"),
        ({"adapters": {}}, TypeError, "adapters must be a non-empty mapping"),
        ({"adapters": {"a": "dept"}}, TypeError, r"adapters\['a'\] must be a PromptTuningConfig or DePTConfig"),
        ({"one_adapter": "other"}, ValueError, "one_adapter must name an adapter of adapters"),
        ({"batch": 2}, ValueError, "batch must be >= the 3 adapters"),
        ({"repeat": 1}, ValueError, "repeat must be an int >= 2"),
        ({"seq_len": 1020}, ValueError, "seq_len = 1020"),
    ],
)
def test_bad_input_is_refused_before_the_model_is_touched(change, error, pattern):
    model = tiny(change.pop("model", "gpt2"))
    flags = [p.requires_grad for p in model.parameters()]
    args = {"adapters": MIX, "one_adapter": "wide", "batch": 4, "seq_len": 5, "repeat": 2, **change}
    with pytest.raises(error, match=pattern):
        measure_mixed_adapters(model, "tiny", **args)
    assert [p.requires_grad for p in model.parameters()] == flags


def test_table_is_rendered_from_the_rows():
    base = dict(model="GPT-2", device="cpu", dtype="float32", backend="torch", batch=8, seq_len=128,
                prefill_p20_ms=1.0, prefill_p80_ms=99.0, decode_tokens=8, shared_prompt=True)  # fmt: skip
    mix = "a (dept m=60 r=30), b (prompt_tuning m=20)"
    rows = [
        dataclasses.asdict(MixedEndToEndRow(path=p, adapters=a, distinct_adapters=n, model_calls=c, prefill_ms=t,
                                            prefill_tokens_per_s=1024 / t * 1e3, decode_ms_per_token=d,
                                            same_tokens_as_mixed=s, **base))  # fmt: skip
        for p, a, n, c, t, d, s in [("mixed", mix, 2, 1, 22.0, 5.5, None),
                                    ("one_adapter", "a (dept m=60 r=30)", 1, 1, 20.0, 5.0, None),
                                    ("loop", mix, 2, 2, 40.0, 9.0, False)]
    ]  # fmt: skip
    lines = render_end_to_end_mixed(rows)
    assert "| mixed (one bank) | 2 | 1 | yes | 22.0 (1.0-99.0) | 46545 | 1.10x | 5.50 | 1.10x | - |" in lines
    assert "| one adapter | 1 | 1 | yes | 20.0 (1.0-99.0) | 51200 | 1.00x | 5.00 | 1.00x | - |" in lines
    assert "| loop per adapter | 2 | 2 | yes | 40.0 (1.0-99.0) | 25600 | 2.00x | 9.00 | 1.80x | **NO** |" in lines
    assert f"row b on adapter b % n of {mix}" in lines[1] and "through a (dept m=60 r=30) attached" in lines[1]
    assert render_end_to_end_mixed([]) == []
    payload = {"environment": {"cpu": "test", "torch": "t", "triton": "t", "commit": "abc", "date": "today"},
               "reference_shape": {"batch": 8, "seq_len": 1, "hidden": 1, "num_prompt": 1, "max_length": 1,
                                   "lamp_tokens": 1, "pool": 1, "lpt_tokens": 1},
               "ranks": {}, "rows": [], "end_to_end_mixed": rows}  # fmt: skip
    assert "| loop per adapter | 2 | 2 | yes | 40.0 (1.0-99.0) |" in render_readme(payload)
