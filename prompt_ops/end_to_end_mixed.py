"""End to end on a causal LM: a batch mixing several prompt adapters (issue 14) against the same batch with one
adapter and against looping per adapter.

Three paths run the same ``B`` rows of token ids (row ``b`` on adapter ``b % n`` of the mix, so ``B >= n`` puts every
adapter in the batch), each adapter holding the same weights on every path:

- ``mixed``: :func:`prompt_ops.models.attach_many` of the mix, one ``forward`` / ``generate`` call with
  ``adapter_names=`` for the whole batch (the bank zero-pads prompts to the longest and ranks to the largest);
- ``one_adapter``: the whole batch through one adapter of the mix attached alone (:func:`prompt_ops.models.attach`,
  the single-adapter model serving one adapter runs today), the mixing cost's yardstick;
- ``loop``: every adapter of the mix attached alone runs its own rows, one call per adapter in sequence, the tokens
  put back in batch order: what serving a mix costs without a bank (the batch's time is the sum of the calls).

All in eval mode without grad, each model's prompt pass shared and kept across calls where the model family allows
(:mod:`prompt_ops.models.mixed_prompt`, :mod:`prompt_ops.models.shared_prompt`), so prefill runs the input tokens
only. Prefill is one eval forward of the batch with ``logits_to_keep=1`` (as ``generate``'s prefill runs it), also
as input tokens per second; decode is greedy milliseconds per generated token with the KV cache,
``(median t(1 + N new tokens) - median t(1 new token)) / N``. The three prefills, and then the six generate calls,
are timed in alternating rounds (:func:`prompt_ops.profiling.interleaved_time`), so the machine's drift does not
read as a difference between the paths. Each row records what ran: the adapters in the batch, the base model's calls
in one prefill (counted), whether every prompt pass was kept, and for the loop whether its greedy tokens equal the
mixed batch's.

The default mix (:data:`MIX`) holds eight adapters with the bank's longest prompt equal to the one adapter's (60
tokens), so the mixed and one-adapter batches have the same columns: DePT at the paper's settings (m = 60, r = 30,
L_max = 256, lora_alpha = 8), at two other points of the paper's equal-budget (m, r) grid (40, 45) and (20, 60), and
at two smaller ones, (60, 8) and (10, 4); prompt tuning with 60, 40 and 20 tokens. The one adapter is DePT at the
paper's settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from prompt_ops.end_to_end import DECODE_TOKENS, _check_fits, _device_times, model_kind
from prompt_ops.models import DePTConfig, MethodConfig, PromptTuningConfig, attach, attach_many
from prompt_ops.models.prompt_cache import PromptCache
from prompt_ops.models.tuned import model_embedding
from prompt_ops.ops.validation import check_int

MIX: dict[str, MethodConfig] = {
    "dept_m60_r30": DePTConfig(num_tokens=60, rank=30),  # the paper's settings
    "dept_m40_r45": DePTConfig(num_tokens=40, rank=45),  # the paper's equal-budget (m, r) points
    "dept_m20_r60": DePTConfig(num_tokens=20, rank=60),
    "dept_m60_r8": DePTConfig(num_tokens=60, rank=8),
    "dept_m10_r4": DePTConfig(num_tokens=10, rank=4),
    "prompt_tuning_m60": PromptTuningConfig(num_tokens=60),
    "prompt_tuning_m40": PromptTuningConfig(num_tokens=40),
    "prompt_tuning_m20": PromptTuningConfig(num_tokens=20),
}
ONE_ADAPTER = "dept_m60_r30"
PATHS = ("mixed", "one_adapter", "loop")


@dataclasses.dataclass
class MixedEndToEndRow:
    model: str
    path: str  # "mixed" (one bank), "one_adapter" (attach, whole batch) or "loop" (attach per adapter, own rows)
    device: str
    dtype: str
    backend: str
    batch: int
    seq_len: int
    adapters: str  # the adapters the batch runs, "name (method m=.., r=..)", comma-separated
    distinct_adapters: int
    model_calls: int  # the base model's forward calls in one prefill, counted (the kept prompt passes run none)
    shared_prompt: bool  # every prompt pass was computed once and kept for all later calls: the input tokens ran alone
    prefill_ms: float
    prefill_p20_ms: float
    prefill_p80_ms: float
    prefill_tokens_per_s: float  # the batch's input tokens over the prefill median
    decode_ms_per_token: float
    decode_tokens: int  # N of (t(1 + N) - t(1)) / N
    same_tokens_as_mixed: bool | None  # the loop's greedy tokens equal the mixed batch's, row by row; None otherwise


def describe(config: MethodConfig) -> str:
    """``"dept m=60 r=30"`` / ``"prompt_tuning m=60"``: what a row's ``adapters`` field says of an adapter."""
    rank = f" r={config.rank}" if isinstance(config, DePTConfig) else ""
    return f"{config.method} m={config.num_tokens}{rank}"


@dataclasses.dataclass
class Path:
    """One path's calls on the batch: ``prefill()`` (an eval forward with ``logits_to_keep=1``) and
    ``generate(n)`` (``(B, L + n)`` greedy tokens in batch order); ``caches()`` the prompt caches of the adapters
    it runs (None for one not built yet), which say whether their prompt passes were kept; ``names`` the adapters
    of its rows."""

    prefill: Callable[[], object]
    generate: Callable[[int], torch.Tensor]
    caches: Callable[[], list[PromptCache | None]]
    names: list[str]


def _greedy(new_tokens: int) -> dict:
    return {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}


def _check_adapters(adapters: object, one_adapter: object, batch: int) -> None:
    if not isinstance(adapters, Mapping) or not adapters:
        raise TypeError(f"adapters must be a non-empty mapping of adapter names to configs, got {adapters!r}")
    for name, config in adapters.items():
        if not isinstance(config, (PromptTuningConfig, DePTConfig)):
            raise TypeError(f"adapters[{name!r}] must be a PromptTuningConfig or DePTConfig, got {config!r}")
    if one_adapter not in adapters:
        raise ValueError(f"one_adapter must name an adapter of adapters ({list(adapters)}), got {one_adapter!r}")
    if batch < len(adapters):
        raise ValueError(f"batch must be >= the {len(adapters)} adapters (row b runs adapter b % n), got {batch}")


@contextlib.contextmanager
def mixed_paths(
    model: nn.Module,
    adapters: Mapping[str, MethodConfig],
    one_adapter: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    backend: str | None,
) -> Iterator[dict[str, Path]]:
    """The three paths (module docstring) on ``input_ids (B, L)``, row ``b`` on adapter ``b % n`` of ``adapters``,
    by :data:`PATHS`; the single-adapter models hold the bank's weights. ``model`` is put in eval mode, and left on
    exit with its mode and ``requires_grad`` flags as they were (attaching froze it)."""
    names = list(adapters)
    row_names = [names[b % len(names)] for b in range(input_ids.shape[0])]
    rows = {name: [b for b, row in enumerate(row_names) if row == name] for name in names}
    was_training = model.training
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    singles = {}
    try:
        mixed = attach_many(model, adapters, backend=backend).eval()
        for name, config in adapters.items():
            singles[name] = attach(model, config, backend=backend).eval()
            with torch.no_grad():
                bank = mixed.adapter_state_dict(name)
                for key, param in singles[name].adapter_state_dict().items():
                    param.copy_(bank[key])

        def mixed_generate(n: int) -> torch.Tensor:
            return mixed.generate(input_ids, attention_mask, adapter_names=row_names, **_greedy(n))

        def one_generate(n: int) -> torch.Tensor:
            return singles[one_adapter].generate(input_ids, attention_mask, **_greedy(n))

        def loop_prefill() -> list:
            return [singles[name](input_ids=input_ids[index], attention_mask=attention_mask[index], logits_to_keep=1)
                    for name, index in rows.items()]  # fmt: skip

        def loop_generate(n: int) -> torch.Tensor:
            out = input_ids.new_empty(input_ids.shape[0], input_ids.shape[1] + n)
            for name, index in rows.items():
                out[index] = singles[name].generate(input_ids[index], attention_mask[index], **_greedy(n))
            return out

        yield {
            "mixed": Path(
                functools.partial(mixed, input_ids=input_ids, attention_mask=attention_mask, adapter_names=row_names,
                                  logits_to_keep=1),
                mixed_generate, lambda: [mixed.prompt_caches.get(name) for name in names], names,
            ),
            "one_adapter": Path(
                functools.partial(singles[one_adapter], input_ids=input_ids, attention_mask=attention_mask,
                                  logits_to_keep=1),
                one_generate, lambda: [singles[one_adapter].prompt_cache], [one_adapter],
            ),
            "loop": Path(loop_prefill, loop_generate, lambda: [s.prompt_cache for s in singles.values()], names),
        }  # fmt: skip
    finally:
        for single in singles.values():
            single.unload()
        model.train(was_training)
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])


def count_model_calls(model: nn.Module, fn: Callable[[], object]) -> int:
    """How many times ``fn()`` calls ``model``'s forward (a pre-hook, removed however ``fn`` ends)."""
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        fn()
    finally:
        handle.remove()
    return len(calls)


def measure_mixed_adapters(
    model: nn.Module,
    model_name: str,
    adapters: Mapping[str, MethodConfig] = MIX,
    one_adapter: str = ONE_ADAPTER,
    batch: int = 8,
    seq_len: int = 128,
    repeat: int = 5,
    backend: str | None = None,
) -> list[MixedEndToEndRow]:
    """Prefill and greedy decode of a batch mixing ``adapters`` (row ``b`` on adapter ``b % n``) against the same
    batch on ``one_adapter`` alone and against looping per adapter (module docstring): one row per path of
    :data:`PATHS`, in that order, on random token ids. ``model``: a causal LM (its device and dtype as they are);
    ``backend=None`` picks Triton on CUDA, the eager torch backend elsewhere. The model is left as it was."""
    embedding = model_embedding(model)
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str (the rows' label), got {type(model_name).__name__}")
    if model_kind(model) != "causal":
        raise ValueError(f"model must be a causal LM (it generates), got {type(model).__name__}")
    batch, seq_len = check_int("batch", batch, 1), check_int("seq_len", seq_len, 1)
    repeat = check_int("repeat", repeat, 2)
    _check_adapters(adapters, one_adapter, batch)
    widest = max(adapters.values(), key=lambda config: config.num_tokens)
    _check_fits(model, embedding, "the widest adapter", widest, DECODE_TOKENS, batch, seq_len)
    device, dtype = embedding.weight.device, embedding.weight.dtype
    backend = backend or ("triton" if device.type == "cuda" else "torch")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, embedding.num_embeddings, (batch, seq_len), generator=generator).to(device)
    mask = torch.ones(batch, seq_len, dtype=torch.int64, device=device)

    with torch.no_grad(), mixed_paths(model, adapters, one_adapter, ids, mask, backend) as paths:
        for path in paths.values():  # computes and keeps every prompt pass: the counted prefill is a warm one
            path.prefill()
        calls = {name: count_model_calls(model, path.prefill) for name, path in paths.items()}
        tokens = {name: path.generate(1 + DECODE_TOKENS) for name, path in paths.items()}
        prefills = _device_times([path.prefill for path in paths.values()], repeat, device)
        lengths = (1 + DECODE_TOKENS, 1)
        generates = _device_times(
            [functools.partial(path.generate, n) for path in paths.values() for n in lengths], repeat, device
        )
        kept = {
            name: all(cache is not None and cache.builds == 1 for cache in path.caches())
            for name, path in paths.items()
        }
    rows = []
    for index, (name, path) in enumerate(paths.items()):
        prefill, longer, shorter = prefills[index], generates[2 * index], generates[2 * index + 1]
        rows.append(
            MixedEndToEndRow(
                model=model_name, path=name, device=str(device), dtype=str(dtype).removeprefix("torch."),
                backend=backend, batch=batch, seq_len=seq_len,
                adapters=", ".join(f"{a} ({describe(adapters[a])})" for a in path.names),
                distinct_adapters=len(path.names), model_calls=calls[name], shared_prompt=kept[name],
                prefill_ms=prefill["median"] * 1e3, prefill_p20_ms=prefill["p20"] * 1e3,
                prefill_p80_ms=prefill["p80"] * 1e3, prefill_tokens_per_s=batch * seq_len / prefill["median"],
                decode_ms_per_token=(longer["median"] - shorter["median"]) / DECODE_TOKENS * 1e3,
                decode_tokens=DECODE_TOKENS,
                same_tokens_as_mixed=bool(torch.equal(tokens[name], tokens["mixed"])) if name == "loop" else None,
            )
        )  # fmt: skip
    return rows


__all__ = ["MIX", "ONE_ADAPTER", "PATHS", "MixedEndToEndRow", "measure_mixed_adapters", "mixed_paths"]
