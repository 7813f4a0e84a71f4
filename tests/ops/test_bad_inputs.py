"""Bad input raises a clear ValueError/TypeError naming the argument, before any kernel runs."""

import pytest
import torch

import prompt_ops
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
        ("attention_mask", torch.ones(2, 5), ValueError, r"attention_mask must have the shape of input_ids"),
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
