"""Shared test helpers: input builders and dtype-aware comparisons (tolerances from DESIGN.md §4)."""

from __future__ import annotations

import dataclasses

import torch

from prompt_ops.ops import reference

LOW_PRECISION = (torch.float16, torch.bfloat16)


def tolerances(dtype: torch.dtype, dot: bool = False) -> dict[str, float]:
    if dtype in LOW_PRECISION:
        return {"rtol": 1.6e-2, "atol": 1e-2}
    return {"rtol": 1e-4, "atol": 1e-4} if dot else {"rtol": 1e-5, "atol": 1e-5}


@dataclasses.dataclass
class EmbedCase:
    """Inputs of one prompt_embed / dept_embed call (``rank=0``: no offset)."""

    input_ids: torch.Tensor
    weight: torch.Tensor
    prompt: torch.Tensor
    lora_a: torch.Tensor | None
    lora_b: torch.Tensor | None
    attention_mask: torch.Tensor | None
    scale: float

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for p in (self.prompt, self.lora_a, self.lora_b) if p is not None]

    def reference(self):
        """Reference ``(out, mask, params)`` on fresh leaf copies of the parameters, so that its gradients can be
        taken separately. A fp16/bf16 table is upcast: the reference is computed in fp32 from the same inputs."""
        weight = self.weight.float() if self.weight.dtype in LOW_PRECISION else self.weight
        params = [p.detach().clone().requires_grad_(True) for p in self.params]
        prompt = params[0]
        lora_a, lora_b = (params[1], params[2]) if self.lora_a is not None else (None, None)
        out, mask = reference.dept_embed(
            self.input_ids, weight, prompt, lora_a, lora_b, self.scale, self.attention_mask
        )
        return out, mask, params


def make_case(
    batch: int,
    seq_len: int,
    num_prompt: int,
    hidden: int,
    rank: int,
    *,
    vocab: int = 50,
    max_length: int | None = None,
    dtype: torch.dtype = torch.float32,
    mask: str | None = "int64",
    ids_dtype: torch.dtype = torch.int64,
    device: str = "cpu",
    param_dtype: torch.dtype = torch.float32,
) -> EmbedCase:
    """Random inputs; ``mask`` is a dtype name or None. Parameters are fp32 leaves that require grad."""
    max_length = max_length if max_length is not None else seq_len + 3
    ids = torch.randint(0, vocab, (batch, seq_len), dtype=ids_dtype, device=device)
    weight = torch.randn(vocab, hidden, device=device).to(dtype)
    prompt = torch.randn(num_prompt, hidden, device=device, dtype=param_dtype, requires_grad=True)
    lora_a = lora_b = None
    if rank:
        lora_a = torch.randn(max_length, rank, device=device, dtype=param_dtype, requires_grad=True)
        lora_b = (0.3 * torch.randn(rank, hidden, device=device, dtype=param_dtype)).requires_grad_(True)
    attention_mask = None
    if mask is not None:
        attention_mask = (torch.rand(batch, seq_len, device=device) > 0.3).to(getattr(torch, mask))
    return EmbedCase(ids, weight, prompt, lora_a, lora_b, attention_mask, 0.73 if rank else 0.0)


def run_public(case: EmbedCase, backend: str):
    """Call the public entry for the case."""
    import prompt_ops

    if case.lora_a is None:
        return prompt_ops.prompt_embed(
            case.input_ids, case.weight, case.prompt, attention_mask=case.attention_mask, backend=backend
        )
    return prompt_ops.dept_embed(
        case.input_ids,
        case.weight,
        case.prompt,
        case.lora_a,
        case.lora_b,
        scale=case.scale,
        attention_mask=case.attention_mask,
        backend=backend,
    )


def grads_of(out: torch.Tensor, grad: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out, params, grad))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, dot: bool = False, msg=""):
    torch.testing.assert_close(actual.float(), expected.float(), **tolerances(dtype, dot), msg=msg or None)
