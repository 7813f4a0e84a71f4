"""Bad input raises a clear ValueError/TypeError naming the argument, before any kernel runs."""

import functools
import re

import numpy as np
import pytest
import torch

import prompt_ops
from prompt_ops.ops import reference
from prompt_ops.ops.adept_embed import check_dropout
from prompt_ops.ops.validation import check_probability
from tests.helpers import make_case

BACKENDS = ["torch", "triton"]


def dept(case, backend, **overrides):
    args = {
        "input_ids": case.input_ids,
        "weight": case.weight,
        "prompt": case.prompt,
        "lora_a": case.lora_a,
        "lora_b": case.lora_b,
        "scale": case.scale,
        "attention_mask": case.attention_mask,
        "backend": backend,
    }
    args.update(overrides)
    positional = [args.pop(k) for k in ("input_ids", "weight", "prompt", "lora_a", "lora_b")]
    return prompt_ops.dept_embed(*positional, **args)


@pytest.fixture
def case():
    return make_case(2, 6, 3, 8, 4, vocab=20, max_length=6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_id", [-1, 20, 10**6])
def test_token_ids_out_of_range(case, backend, bad_id):
    case.input_ids[1, 2] = bad_id
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 20\).*" + str(bad_id)):
        dept(case, backend)
    with pytest.raises(ValueError, match="input_ids must be in"):
        prompt_ops.prompt_embed(case.input_ids, case.weight, case.prompt, backend=backend)


def test_id_check_can_be_switched_off(case, monkeypatch):
    case.input_ids[0, 0] = 25
    out, _ = dept(case, "triton", check_ids=False)
    assert out.shape == (2, 9, 8)
    monkeypatch.setenv("PROMPT_OPS_CHECK_IDS", "0")
    out, _ = dept(case, "triton")
    assert out.shape == (2, 9, 8)
    with pytest.raises(TypeError, match="check_ids must be a bool"):
        dept(case, "triton", check_ids="no")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_longer_than_max_length(backend):
    case = make_case(2, 7, 3, 8, 4, vocab=20, max_length=6)
    with pytest.raises(ValueError, match=r"L = 7 tokens but lora_a has L_max = 6"):
        dept(case, backend)


@pytest.mark.parametrize(
    "field, value, error, pattern",
    [
        ("prompt", torch.randn(3, 9), ValueError, r"prompt must have shape \(m, d\) with d = weight.shape\[1\] = 8"),
        ("lora_b", torch.randn(5, 8), ValueError, r"lora_b must have shape \(r, d\) = \(4, 8\)"),
        ("lora_b", torch.randn(4, 7), ValueError, r"lora_b must have shape \(r, d\) = \(4, 8\)"),
        ("lora_a", torch.randn(6, 0), ValueError, r"r >= 1"),
        ("input_ids", torch.zeros(12, dtype=torch.long), ValueError, r"input_ids must have shape \(B, L\) \(2-D\)"),
        ("weight", torch.randn(20, 0), ValueError, r"weight must have shape \(V, d\) with d >= 1"),
        ("weight", torch.randn(20, 8, 1), ValueError, r"weight must have shape \(V, d\) \(2-D\)"),
        ("lora_a", torch.randn(6), ValueError, r"lora_a must have shape \(L_max, r\)"),
        ("input_ids", torch.zeros(2, 6), TypeError, r"input_ids must hold int64 or int32 token ids, got torch.float32"),
        ("input_ids", torch.zeros(2, 6, dtype=torch.int16), TypeError, r"int64 or int32"),
        ("weight", torch.zeros(20, 8, dtype=torch.int64), TypeError, r"weight must be .*got torch.int64"),
        ("prompt", [[0.0] * 8] * 3, TypeError, r"prompt must be a torch.Tensor of shape \(m, d\), got list"),
        ("attention_mask", torch.ones(2, 5), ValueError, r"attention_mask must have shape \(B, L\) like input_ids"),
        ("scale", "1.0", TypeError, r"scale must be a real number, got str"),
        ("scale", float("nan"), ValueError, r"scale must be finite"),
        ("backend", "cuda", ValueError, r"backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_shapes_types_and_values(case, backend, field, value, error, pattern):
    overrides = {field: value}
    if field != "backend":
        overrides["backend"] = backend
    with pytest.raises(error, match=pattern):
        dept(case, **overrides) if "backend" in overrides else dept(case, backend, **overrides)


def test_fp64_table_is_refused_by_triton_only(case):
    case.weight = case.weight.double()
    with pytest.raises(TypeError, match=r"weight must be float32, float16 or bfloat16 for backend='triton'"):
        dept(case, "triton")
    out, _ = dept(case, "torch")
    assert out.dtype == torch.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_trainable_table_is_refused(case, backend):
    case.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"weight .* requires grad.*requires_grad_\(False\)"):
        dept(case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensors_on_different_devices(case, backend):
    with pytest.raises(ValueError, match=r"one device, got .*lora_b on meta"):
        dept(case, backend, lora_b=case.lora_b.detach().to("meta"))


def test_missing_lora_is_a_type_error(case):
    with pytest.raises(TypeError, match=r"lora_a must be a torch.Tensor of shape \(L_max, r\), got NoneType"):
        dept(case, "torch", lora_a=None)


# ----------------------------------------------------------------------------------------------------------------
# Regressions from the bad-input campaign (issue 11): each failed with a crash or another exception type before.
# ----------------------------------------------------------------------------------------------------------------

HUGE = 2**40


def small(*shape, dtype=torch.float32):
    return torch.randn(shape).to(dtype)


def lpt_args(batch=2, seq_len=4, hidden=8, rank=3, num_tokens=2, mode="naive"):
    width = num_tokens * hidden if mode == "naive" else hidden
    return small(batch, seq_len, hidden), [small(hidden, rank), small(rank), small(rank, width), small(width)]


LPT_ENTRIES = [prompt_ops.lpt_prompt, prompt_ops.lpt_insert]


def dense_prompt_calls(prompt, backend, retype=None):
    """Every entry that takes a dense ``prompt (m, d)``, with ``prompt`` replaced and the parameters named in
    ``retype`` cast to its dtype: ``(name, thunk)``."""
    retype = retype or {}
    ids, table = torch.randint(0, 10, (2, 3)), small(10, 8)
    lora = {"lora_a": small(5, 2), "lora_b": small(2, 8)}
    ffn = {"w_down": small(8, 2), "b_down": small(2), "w_up": small(2, 8), "b_up": small(8)}
    subspaces = {"w_down": small(2, 8, 3), "w_up": small(2, 3, 8), "w_gate": small(8, 2), "b_gate": small(2)}

    def call(fn, leading, names, params, **keywords):
        params = {k: v.to(retype.get(k, v.dtype)) for k, v in params.items()}
        return lambda: fn(*leading, prompt, *[params[k] for k in names], backend=backend, **keywords)

    ept_names = ("lora_a", "lora_b", "w_down", "w_up", "w_gate", "b_gate")
    return [
        ("prompt_embed", call(prompt_ops.prompt_embed, (ids, table), (), {})),
        ("dept_embed", call(prompt_ops.dept_embed, (ids, table), ("lora_a", "lora_b"), lora, scale=1.0)),
        ("adept_embed", call(prompt_ops.adept_embed, (ids, table), tuple(ffn), ffn)),
        ("ept_prompt", call(prompt_ops.ept_prompt, (), ept_names, {**lora, **subspaces}, scale=1.0)),
        ("ept_embed", call(prompt_ops.ept_embed, (ids, table), ept_names, {**lora, **subspaces}, scale=1.0)),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["naive", "pool", "max"])
@pytest.mark.parametrize("entry", LPT_ENTRIES, ids=lambda f: f.__name__)
def test_lpt_empty_sequence_names_hidden(entry, mode, backend):
    """L = 0 segfaulted the Triton backend, raised IndexError on the torch backend, and APPG blamed an
    attention mask nobody passed."""
    hidden, params = lpt_args(seq_len=0, mode=mode)
    with pytest.raises(ValueError, match=r"hidden must have shape \(B, L, d\) with L, d >= 1 .*got \(2, 0, 8\)"):
        entry(hidden, *params, num_tokens=2, mode=mode, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_none_is_a_type_error(backend):
    for _name, call in dense_prompt_calls(None, backend):
        with pytest.raises(TypeError, match=r"prompt must be a torch.Tensor of shape \((m|s), d\), got NoneType"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("other", [torch.float16, torch.float64], ids=str)
def test_mixed_parameter_dtypes_are_refused_alike(backend, other):
    """fp64 lora_a with fp32 lora_b: a RuntimeError from a matmul on the torch backend, accepted by the Triton one.
    Now one rule: the parameters share one dtype (the Triton backend refuses fp64 itself first)."""
    expected = rf"parameters must share one dtype, got (lora_a|w_down|lora_a, w_down) {other};"
    if other == torch.float64 and backend == "triton":
        expected = r"must be float32, float16 or bfloat16 for backend='triton', got torch.float64"
    prompt = small(3, 8)
    for name, call in dense_prompt_calls(prompt, backend, retype={"lora_a": other, "w_down": other}):
        if name == "prompt_embed":
            continue  # one parameter
        with pytest.raises(TypeError) as caught:
            call()
        assert re.search(expected, str(caught.value)), f"{name}: {caught.value}"
    factors = (small(4, 2), small(2).to(other), small(2, 8))
    with pytest.raises(TypeError, match=r"\bq\b"):
        prompt_ops.lamp_prompt(*factors, pool=2, backend=backend)
    with pytest.raises(TypeError, match=r"\bq\b"):
        prompt_ops.lamp_embed(torch.randint(0, 10, (2, 3)), small(10, 8), *factors, pool=2, backend=backend)
    hidden, params = lpt_args()
    params[3] = params[3].to(other)
    for entry in LPT_ENTRIES:
        with pytest.raises(TypeError, match=r"\bb_up\b"):
            entry(hidden, *params, num_tokens=2, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_dtype_parameters_of_another_precision_run(backend):
    """The rule refuses mixes only: fp64 everywhere runs on the torch backend, and the table may differ."""
    if backend == "torch":
        ids, table = torch.randint(0, 10, (2, 3)), small(10, 8)
        out, _ = prompt_ops.dept_embed(ids, table, small(3, 8).double(), small(5, 2).double(), small(2, 8).double(),
                                       scale=1.0, backend=backend)  # fmt: skip
        assert out.dtype == torch.float32
    hidden, params = lpt_args()
    out = prompt_ops.lpt_prompt(hidden.to(torch.bfloat16), *params, num_tokens=2, backend=backend)
    assert out.shape == (2, 2, 8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", LPT_ENTRIES, ids=lambda f: f.__name__)
def test_lpt_input_checks(entry, backend):
    hidden, params = lpt_args(hidden=0)
    with pytest.raises(ValueError, match=r"hidden must have shape \(B, L, d\) with L, d >= 1"):
        entry(hidden, *params, num_tokens=2, backend=backend)
    hidden, params = lpt_args(rank=0)
    with pytest.raises(ValueError, match=r"w_down must have shape \(d, h\) with d = hidden.shape\[2\] = 8 and h >= 1"):
        entry(hidden, *params, num_tokens=2, backend=backend)
    for mode in ("naive", "pool", "max"):
        hidden, params = lpt_args(mode=mode)
        run = functools.partial(entry, hidden, *params, num_tokens=2, mode=mode, backend=backend)
        with pytest.raises(TypeError, match=r"attention_mask must be bool, integer or float \(not complex\)"):
            run(attention_mask=torch.ones(2, 4, dtype=torch.complex64))
        nan_mask = torch.tensor([[1.0, 1.0, float("nan"), 0.0], [1.0, 1.0, 1.0, 1.0]])
        with pytest.raises(ValueError, match=r"attention_mask must hold finite values"):
            run(attention_mask=nan_mask)
        with pytest.raises(TypeError, match=r"index must be an int64 or int32 tensor, got torch.float32"):
            run(index=torch.zeros(2))
        with pytest.raises(TypeError, match=r"num_tokens must be an int >= 1, got float"):
            entry(hidden, *params, num_tokens=2.0, mode=mode, backend=backend)
        with pytest.raises(TypeError, match=r"seed must be an int in \[0, 2147483647\) or None, got str"):
            run(seed="1")
    for mode in ("pool", "max"):
        hidden, params = lpt_args(mode=mode)
        with pytest.raises(ValueError, match=r"attention_mask must hold only 0 and 1"):
            entry(hidden, *params, num_tokens=2, mode=mode, attention_mask=torch.full((2, 4), 2), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_masks_are_checked(backend):
    """Every embedding op takes a bool/int/float mask with finite values (a complex mask passed through, a NaN was
    copied into the extended mask)."""
    for mask, error, pattern in [
        (torch.ones(2, 3, dtype=torch.complex64), TypeError, r"attention_mask must be bool, integer or float"),
        (torch.tensor([[1.0, float("nan"), 1.0], [1.0, 1.0, 0.0]]), ValueError, r"attention_mask must hold finite"),
        (torch.full((2, 3), float("inf")), ValueError, r"attention_mask must hold finite"),
    ]:
        ids, table = torch.randint(0, 10, (2, 3)), small(10, 8)
        with pytest.raises(error, match=pattern):
            prompt_ops.prompt_embed(ids, table, small(3, 8), attention_mask=mask, backend=backend)
        with pytest.raises(error, match=pattern):
            prompt_ops.lamp_embed(ids, table, small(4, 2), small(2), small(2, 8), pool=2, attention_mask=mask,
                                  backend=backend)  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_sizes_no_memory_holds_are_refused_up_front(backend):
    """num_tokens near 2**40 (APPG, lpt_prompt) reached the allocator; so did expanded inputs whose outputs no
    memory holds. Now a ValueError names the arguments that give the sizes."""
    hidden, params = lpt_args(mode="pool")
    for entry in LPT_ENTRIES:
        with pytest.raises(ValueError, match=r"num_tokens = 1099511627776 and hidden \(B, L, d\) = \(2, 4, 8\) ask"):
            entry(hidden, *params, num_tokens=HUGE, mode="pool", backend=backend)
    many_ids = torch.zeros(1, 3, dtype=torch.int64).expand(HUGE, 3)
    with pytest.raises(ValueError, match=r"input_ids \(B, L\) = \(1099511627776, 3\), prompt .* ask for outputs"):
        prompt_ops.prompt_embed(many_ids, small(10, 8), small(3, 8), backend=backend)
    long_a = torch.zeros(1, 2).expand(HUGE, 2)
    ept = (small(3, 8), long_a, small(2, 8), small(1, 8, 2), small(1, 2, 8), small(8, 1), small(1))
    with pytest.raises(ValueError, match=r"lora_a \(L_max, r\) = \(1099511627776, 2\) ask for outputs"):
        prompt_ops.ept_prompt(*ept, scale=1.0, backend=backend)
    with pytest.raises(ValueError, match=r"u \(l, r\) = \(1099511627776, 2\), pool = 1 .* ask for outputs"):
        prompt_ops.lamp_prompt(torch.zeros(1, 2).expand(HUGE, 2), small(2), small(2, 8), pool=1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_messages_name_the_right_thing(backend):
    ids, table = torch.randint(0, 10, (2, 3)), small(10, 8)
    ffn = (small(8, 0), small(0), small(0, 8), small(8))
    with pytest.raises(ValueError, match=r"w_down must have shape \(d, r\) with d = weight.shape\[1\] = 8 and r >= 1"):
        prompt_ops.adept_embed(ids, table, small(3, 8), *ffn, backend=backend)
    subspaces = (small(1, 8, 2), small(1, 2, 8), small(8, 1), small(1))
    with pytest.raises(ValueError, match=r"longer than EPT's max_length; .* build EPT with max_length >= 3"):
        prompt_ops.ept_embed(ids, table, small(3, 8), small(2, 2), small(2, 8), *subspaces, scale=1.0, backend=backend)
    with pytest.raises(ValueError, match=r"lora_b must have shape \(r, d\) = \(2, 8\) to match .* and prompt \(s, d\)"):
        prompt_ops.ept_prompt(small(3, 8), small(2, 2), small(2, 7), *subspaces, scale=1.0, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_tensors_are_refused(backend):
    ids, table = torch.randint(0, 10, (2, 3)), small(10, 8)
    with pytest.raises(ValueError, match=r"all tensors must be on one device, got prompt on meta; input_ids, weight"):
        prompt_ops.prompt_embed(ids, table, small(3, 8).to("meta"), backend=backend)
    with pytest.raises(ValueError, match=r"input_ids, weight, prompt are on the meta device, which holds no data"):
        prompt_ops.prompt_embed(ids.to("meta"), table.to("meta"), small(3, 8).to("meta"), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_and_expanded_small_tensors(backend):
    """The Triton kernels read ADePT's and LPT's biases and LPT's row index at unit stride: a strided or expanded
    one gave wrong values (or read past its storage)."""
    ids, table = torch.randint(0, 10, (2, 3)), small(10, 8)
    prompt, w_down, b_down, w_up = small(3, 8), small(8, 2), small(2), small(2, 8)
    b_up = small(16)[::2]  # stride 2
    out, _ = prompt_ops.adept_embed(ids, table, prompt, w_down, b_down, w_up, b_up, backend=backend)
    expected, _ = reference.adept_embed(ids, table, prompt, w_down, b_down, w_up, b_up)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    hidden, params = lpt_args()
    params[1] = params[1][:1].expand(3)  # stride 0
    index = torch.tensor([3, 1, 2, 0])[::2]  # int64, stride 2
    out = prompt_ops.lpt_prompt(hidden, *params, num_tokens=2, index=index, backend=backend)
    torch.testing.assert_close(out, reference.lpt_prompt(hidden, *params, 2, index), rtol=1e-4, atol=1e-4)


def test_integer_scalars_may_be_numpy_and_dropout_is_named_as_the_caller_calls_it():
    hidden, params = lpt_args(mode="pool")
    out = prompt_ops.lpt_prompt(hidden, *params, num_tokens=np.int64(2), mode="pool", seed=np.int32(3),
                                backend="torch")  # fmt: skip
    assert out.shape == (2, 2, 8)
    with pytest.raises(ValueError, match=r"^dropout must be a float in \[0, 1\), got 1.5"):
        check_probability("dropout", 1.5)
    with pytest.raises(ValueError, match=r"dropout_p must be a float in \[0, 1\), got nan"):
        check_dropout(float("nan"), training=True, seed=None)
