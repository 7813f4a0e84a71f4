"""End-to-end measurements of a prompt-tuning method on a Hugging Face model: the engine of ``prompt-ops bench``.

Per method: a training step (forward, backward, AdamW over the method's parameter groups at its official recipe's
rates, ``tuned.parameter_groups()``: DePT's prompt at 3e-1 and low-rank pair at 5e-4, and so on) timed as
wall-clock median and 20/80 percentiles, tokens per second, the memory a step holds (with CUDA: peak allocated;
everywhere: the activations autograd saves for backward, :mod:`prompt_ops.profiling.memory`), and inference
latency: the prefill (one eval forward of the batch; on a causal LM with ``logits_to_keep=1``, the next token's
logits only, as ``generate``'s prefill runs it) and, for models that generate, the time per generated token with the
KV cache. Every method decodes with the cache, LPT included (its prompt is computed from the input at prefill and
stays in the upper layers' cache); for LPT the rows also time decoding without it, every step recomputing the
sequence (how LPT decoded before), for comparison.

Each row runs one prompt pass, recorded in its ``shared_prompt`` field: the unshared path (the model runs the
``B * (m + L)`` prompted rows) or, on the causal LMs the shared prompt pass covers
(:mod:`prompt_ops.models.shared_prompt`) and for every method but LPT, the shared pass (the prompt rows once per
call, batch 1, their keys and values expanded to the batch). :func:`measure_paths` measures both where the shared
pass applies, and :func:`sweep_shared_prompt` compares them for prompt tuning over batch sizes and prompt lengths.

A causal LM trains on a source half (labels ``-100``) and a target half, as the official GPT-2 LPT does: LPT
computes its prompt from the source, and refuses labels that leave none.

The methods run at their papers' settings (:data:`METHODS`); vanilla prompt tuning with 100 tokens is the baseline
whose trainable-parameter budget DePT and ADePT match for T5-Base (76,800 at d=768).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from torch import nn

from prompt_ops.models import (
    ADePTConfig,
    DePTConfig,
    EPTConfig,
    LAMPConfig,
    LPTConfig,
    MethodConfig,
    PromptTuningConfig,
    attach,
)
from prompt_ops.models.inputs import check_length
from prompt_ops.models.shared_prompt import family_refusal
from prompt_ops.models.tuned import model_embedding
from prompt_ops.ops.validation import check_int, check_output_sizes
from prompt_ops.profiling import interleaved_time
from prompt_ops.profiling.memory import saved_activations

METHODS: dict[str, MethodConfig] = {
    "prompt_tuning": PromptTuningConfig(num_tokens=100),
    "dept": DePTConfig(),  # m=60, r=30, L_max=256
    "adept": ADePTConfig(),  # m=60, r=19
    "lamp": LAMPConfig(),  # l=100, r=8, pooled by 2
    "ept": EPTConfig(),  # m=60, r=30, K=4, h=8
    "lpt": LPTConfig(),  # NPG after half the layers, n=5, h=128
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DECODE_TOKENS = 8
SWEEP_BATCHES = (1, 8, 32)
SWEEP_PROMPT_TOKENS = (20, 100)


@dataclasses.dataclass
class EndToEndRow:
    model: str
    method: str
    device: str
    dtype: str
    backend: str
    batch: int
    seq_len: int
    shared_prompt: bool  # the shared prompt pass ran (prompt rows once per call, batch 1); False: the unshared path
    prompt_rows: int  # rows put in front of the input (LPT: 0, its rows enter at a middle layer)
    trainable_params: int
    step_ms: float
    step_p20_ms: float
    step_p80_ms: float
    tokens_per_s: float
    activation_mb: float  # bytes autograd saves for backward, weights excluded
    peak_memory_mb: float | None  # CUDA peak allocated during a step; None on the CPU
    prefill_ms: float
    decode_ms_per_token: float | None  # with the KV cache; None for models that do not generate
    decode_recompute_ms_per_token: float | None  # LPT on a causal LM: without the cache; None otherwise


def model_kind(model: nn.Module) -> str:
    """``"seq2seq"``, ``"causal"`` (a causal LM head) or ``"encoder"`` (anything else: its output is squared)."""
    if getattr(model.config, "is_encoder_decoder", False):
        return "seq2seq"
    if hasattr(model, "generate") and model.__class__.__name__.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal"
    return "encoder"


def prompt_rows(config: MethodConfig) -> int:
    """The rows ``config``'s method puts in front of the input embeddings (LPT: 0, its rows enter at a middle layer)."""
    return 0 if isinstance(config, LPTConfig) else config.num_tokens // getattr(config, "pool", 1)


def shared_prompt_applies(model: nn.Module, config: MethodConfig) -> bool:
    """Whether the shared prompt pass can run ``config``'s method on ``model``: a causal LM of a family it covers,
    and a prompt that does not depend on the input (every method but LPT)."""
    return not isinstance(config, LPTConfig) and family_refusal(model) is None


def _check_fits(
    model: nn.Module, embedding: nn.Embedding, label: str, config: MethodConfig, decoded: int, batch: int, seq_len: int
) -> None:
    """``batch`` and ``seq_len`` fit the model before anything runs: the sequence with the method's prompt rows (and
    the ``decoded`` tokens) in its position table, and one ``(batch, rows + seq_len, d)`` activation in memory."""
    rows = prompt_rows(config)
    check_length(
        model,
        rows + seq_len + decoded,
        f"seq_len = {seq_len}, {label}'s {rows} prompt rows and {decoded} decoded tokens",
    )
    shape = (batch, rows + seq_len, embedding.embedding_dim)
    sources = f"batch = {batch} and seq_len = {seq_len}"
    check_output_sizes(
        sources, embedding.weight.device, {"one activation (batch, rows + seq_len, d)": (shape, embedding.weight.dtype)}
    )


def _loss_fn(tuned: nn.Module, kind: str, ids: torch.Tensor, mask: torch.Tensor) -> Callable[[], torch.Tensor]:
    if kind == "seq2seq":
        labels = ids[:, : min(16, ids.shape[1])].contiguous()
        return lambda: tuned(input_ids=ids, attention_mask=mask, labels=labels).loss
    if kind == "causal":
        labels = ids.clone()
        labels[:, : (ids.shape[1] + 1) // 2] = -100  # the source half: no loss, and LPT's prompt is computed from it
        return lambda: tuned(input_ids=ids, attention_mask=mask, labels=labels).loss

    def encoder_loss() -> torch.Tensor:
        out = tuned(input_ids=ids, attention_mask=mask)
        hidden = out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out.logits
        return hidden.float().square().mean()

    return encoder_loss


def _device_times(fns: list[Callable[[], object]], repeat: int, device: torch.device) -> list[dict[str, float]]:
    """Median and 20/80 percentiles in seconds of each of ``fns``, timed in alternating rounds
    (:func:`~prompt_ops.profiling.interleaved_time`): CUDA-synchronised on a GPU, plain wall clock on the CPU."""
    if device.type == "cuda":
        fns = [_synced(fn, device) for fn in fns]
    return interleaved_time(fns, repeat=repeat, warmup=2)


def _synced(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    def synced() -> None:
        fn()
        torch.cuda.synchronize(device)

    return synced


def _method_config(method: object) -> MethodConfig:
    """The config of ``method``, a name in :data:`METHODS`."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method]


def measure_method(
    model: nn.Module,
    model_name: str,
    method: str,
    batch: int = 8,
    seq_len: int = 128,
    repeat: int = 5,
    backend: str | None = None,
    shared_prompt: bool = False,
) -> EndToEndRow:
    """Attach ``METHODS[method]`` to ``model`` (its device and dtype as they are) and measure it on random token
    ids. ``backend=None`` picks Triton on CUDA, the eager torch backend elsewhere. ``shared_prompt``: the prompt
    pass, forced on or off (:func:`prompt_ops.models.attach`; True is refused with the reason where the shared pass
    does not apply; forced, it also runs with the base model's dropout active, the prompt rows then sharing one
    dropout mask across the batch). The model is left as it was (LPT's hooks are removed; the other methods never
    modify it)."""
    config = _method_config(method)
    if not isinstance(shared_prompt, bool):
        raise TypeError(
            f"shared_prompt must be True or False (the row records which path ran), got {type(shared_prompt).__name__}"
        )
    return _measure(model, model_name, method, config, batch, seq_len, repeat, backend, (shared_prompt,))[0]


def measure_paths(
    model: nn.Module,
    model_name: str,
    method: str,
    batch: int = 8,
    seq_len: int = 128,
    repeat: int = 5,
    backend: str | None = None,
) -> list[EndToEndRow]:
    """:func:`measure_method` on the unshared path and, where the shared prompt pass applies
    (:func:`shared_prompt_applies`), on the shared one: one row or two, the unshared first. The two paths' timings
    interleave (each repeat runs both in turn), so the machine's drift does not read as a difference between them."""
    config = _method_config(method)
    paths = (False, True) if shared_prompt_applies(model, config) else (False,)
    return _measure(model, model_name, method, config, batch, seq_len, repeat, backend, paths)


def sweep_shared_prompt(
    model: nn.Module,
    model_name: str,
    batches: tuple[int, ...] = SWEEP_BATCHES,
    num_tokens: tuple[int, ...] = SWEEP_PROMPT_TOKENS,
    seq_len: int = 128,
    repeat: int = 5,
    backend: str | None = None,
) -> list[EndToEndRow]:
    """Prompt tuning with each of ``num_tokens`` prompt tokens at each batch size in ``batches``, on the unshared
    and the shared path (in that order, timed in alternating rounds): training step, activations and prefill; no
    decoding (its fields None).
    ``model`` must be a causal LM the shared prompt pass covers."""
    for name, values in (("batches", batches), ("num_tokens", num_tokens)):
        if not isinstance(values, tuple) or not values:
            raise TypeError(f"{name} must be a non-empty tuple of ints, got {values!r}")
    reason = family_refusal(model)
    if reason is not None:
        raise ValueError(f"model: the shared prompt sweep needs a model the shared pass covers; {reason}")
    return [
        row
        for m in num_tokens
        for batch in batches
        for row in _measure(
            model,
            model_name,
            "prompt_tuning",
            PromptTuningConfig(num_tokens=check_int("num_tokens", m, 1)),
            batch,
            seq_len,
            repeat,
            backend,
            (False, True),
            decode=False,
        )
    ]


def _measure(
    model: nn.Module,
    model_name: str,
    method: str,
    config: MethodConfig,
    batch: int,
    seq_len: int,
    repeat: int,
    backend: str | None,
    paths: tuple[bool, ...],
    decode: bool = True,
) -> list[EndToEndRow]:
    """One row per prompt pass in ``paths`` (``shared_prompt`` forced to each) of ``config`` (the method named
    ``method``) attached once to ``model``. The paths' step and prefill timings interleave
    (:func:`_device_times`); activations and decoding (timed only with ``decode``, for a model that generates) are
    measured path by path."""
    embedding = model_embedding(model)
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str (the rows' label), got {type(model_name).__name__}")
    batch, seq_len, repeat = (
        check_int("batch", batch, 1),
        check_int("seq_len", seq_len, 1),
        check_int("repeat", repeat, 2),
    )
    kind = model_kind(model)
    decode = decode and kind != "encoder"
    _check_fits(model, embedding, method, config, DECODE_TOKENS if decode and kind == "causal" else 0, batch, seq_len)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    backend = backend or ("triton" if device.type == "cuda" else "torch")
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(1, vocab, (batch, seq_len), generator=generator).to(device)
    mask = torch.ones(batch, seq_len, dtype=torch.int64, device=device)

    was_training = model.training
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    # shared_prompt=True is refused where the shared pass cannot run; each timed call then sets its own path
    tuned = attach(model, config, backend=backend, shared_prompt=any(paths)).train()

    def on(path: bool, fn: Callable[[], object]) -> Callable[[], object]:
        """``fn`` run on the prompt pass ``path``."""

        def run() -> object:
            tuned.shared_prompt = path
            return fn()

        return run

    try:
        trainable = [p for p in tuned.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(tuned.parameter_groups())  # the method's groups at its recipe's rates
        loss = _loss_fn(tuned, kind, ids, mask)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss().backward()
            optimizer.step()

        activations, peaks = [], []
        for path in paths:
            with saved_activations(exclude=model.parameters()) as saved:
                on(path, loss)()
            activations.append(saved.bytes / 1e6)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                on(path, step)()
                peaks.append(torch.cuda.max_memory_allocated(device) / 1e6)
            else:
                peaks.append(None)
        trains = _device_times([on(path, step) for path in paths], repeat, device)

        tuned.eval()
        with torch.no_grad():
            if kind == "seq2seq":
                extra = {"decoder_input_ids": torch.zeros(batch, 1, dtype=torch.long, device=device)}
            else:  # a causal LM's prefill, as generate runs it, computes the next token's logits only
                extra = {"logits_to_keep": 1} if kind == "causal" else {}

            def prefill() -> object:
                return tuned(input_ids=ids, attention_mask=mask, **extra)

            prefills = _device_times([on(path, prefill) for path in paths], repeat, device)
            cached, recompute = [], []
            for path in paths:
                tuned.shared_prompt = path
                cached.append(_decode_ms_per_token(tuned, kind, ids, mask, device) if decode else None)
                lpt_decode = decode and kind == "causal" and isinstance(config, LPTConfig)
                recompute.append(
                    _decode_ms_per_token(tuned, kind, ids, mask, device, use_cache=False) if lpt_decode else None
                )
    finally:
        tuned.unload()
        model.train(was_training)
        for name, p in model.named_parameters():  # attach froze the model
            p.requires_grad_(flags[name])
    return [
        EndToEndRow(
            model=model_name,
            method=method,
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
            backend=backend,
            batch=batch,
            seq_len=seq_len,
            shared_prompt=path,
            prompt_rows=prompt_rows(config),
            trainable_params=sum(p.numel() for p in trainable),
            step_ms=train["median"] * 1e3,
            step_p20_ms=train["p20"] * 1e3,
            step_p80_ms=train["p80"] * 1e3,
            tokens_per_s=batch * seq_len / train["median"],
            activation_mb=activation,
            peak_memory_mb=peak,
            prefill_ms=prefill_time["median"] * 1e3,
            decode_ms_per_token=decode_ms,
            decode_recompute_ms_per_token=recompute_ms,
        )
        for path, train, activation, peak, prefill_time, decode_ms, recompute_ms in zip(
            paths, trains, activations, peaks, prefills, cached, recompute, strict=True
        )
    ]


def _decode_ms_per_token(tuned, kind: str, ids, mask, device, use_cache: bool = True) -> float:
    """``(t(1 + N new tokens) - t(1 new token)) / N``, greedy, exactly N tokens (no early end), with the KV cache
    or (``use_cache=False``) recomputing the sequence at every step."""

    def generate(new_tokens: int) -> float:
        kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0,
                  "use_cache": use_cache}  # fmt: skip
        start = time.perf_counter()
        tuned.generate(input_ids=ids, attention_mask=mask, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    generate(2)  # warm-up
    samples = [generate(1 + DECODE_TOKENS) - generate(1) for _ in range(3)]
    return sorted(samples)[1] / DECODE_TOKENS * 1e3
