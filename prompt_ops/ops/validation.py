"""Argument checks shared by the functional entries: each failure names the argument and what was expected."""

from __future__ import annotations

import functools
import math
import numbers
import os

import torch

from prompt_ops.ops.backend import resolve_backend

TOKEN_ID_DTYPES = (torch.int64, torch.int32)
TRITON_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64) + (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
)
MAX_NUMEL = 2**63 - 1
"""Largest element count int64 indexing can address."""

Params = dict[str, tuple[object, int, str]]
"""Method parameters: ``name -> (value, ndim, layout)``."""


def check_tensor(name: str, value: object, ndim: int, layout: str) -> torch.Tensor:
    """``value`` must be a tensor with ``ndim`` dimensions; ``layout`` names them, e.g. ``"(B, L)"``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout} ({ndim}-D), got shape {tuple(value.shape)}")
    return value


def check_float(name: str, value: torch.Tensor, backend: str) -> None:
    """Floating point; the Triton backend takes fp32, fp16 and bf16."""
    allowed = TRITON_FLOAT_DTYPES if backend == "triton" else None
    if not value.is_floating_point() or (allowed is not None and value.dtype not in allowed):
        expected = "float32, float16 or bfloat16" if allowed else "a floating-point dtype"
        raise TypeError(f"{name} must be {expected} for backend={backend!r}, got {value.dtype}")


def check_scale(scale: object) -> float:
    """A finite real number."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_int(name: str, value: object, minimum: int) -> int:
    """An integer (Python or NumPy, not bool) ``>= minimum``; returned as ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_probability(name: str, value: object) -> float:
    """A dropout probability: a real number in ``[0, 1)``, as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__}")
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


def _groups(values: dict[str, object]) -> str:
    """``"lora_b on meta; prompt, lora_a on cpu"``: the names grouped by value, smallest group first, so that the
    odd argument leads."""
    by_value: dict[object, list[str]] = {}
    for name, value in values.items():
        by_value.setdefault(value, []).append(name)
    groups = sorted(by_value.items(), key=lambda item: len(item[1]))
    return "; ".join(f"{', '.join(names)} {value}" for value, names in groups)


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """All given tensors on one device, which holds data (not ``meta``); returns it."""
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {name: t.device for name, t in present.items()}
    if len(set(devices.values())) > 1:
        where = _groups({name: f"on {device}" for name, device in devices.items()})
        raise ValueError(f"all tensors must be on one device, got {where}")
    device = next(iter(devices.values()))
    if device.type == "meta":
        raise ValueError(f"{', '.join(present)} are on the meta device, which holds no data: the op needs real tensors")
    return device


def check_same_dtype(tensors: dict[str, torch.Tensor]) -> None:
    """The trainable parameters of one method share one dtype (no silent promotion on either backend)."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        raise TypeError(
            f"the method's parameters must share one dtype, got {_groups(dtypes)}; cast them to one dtype "
            "(usually float32) first"
        )


def check_mask(name: str, mask: object, shape: tuple[int, ...], layout: str) -> torch.Tensor | None:
    """Optional mask: None, or a bool, integer or floating tensor of ``shape``."""
    if mask is None:
        return None
    mask = check_tensor(name, mask, len(shape), layout)
    if mask.dtype not in MASK_DTYPES:
        raise TypeError(f"{name} must be bool, integer or float (not complex), got {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {layout} = {tuple(shape)}, got {tuple(mask.shape)}")
    return mask


def check_mask_values(name: str, mask: torch.Tensor | None, binary: bool = False) -> None:
    """Data-dependent (one device sync): a float mask holds no NaN or infinity; ``binary`` masks hold only 0 and
    1."""
    if mask is None or mask.numel() == 0 or mask.dtype == torch.bool:
        return
    if mask.is_floating_point() and not bool(torch.isfinite(mask).all()):
        raise ValueError(f"{name} must hold finite values, found NaN or infinity")
    if binary and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1")


def check_token_data(input_ids: torch.Tensor, vocab_size: int, attention_mask: torch.Tensor | None) -> None:
    """The data-dependent checks of the embedding ops (one device sync; ``check_ids=False`` skips them): every id in
    ``[0, vocab_size)`` and a float ``attention_mask`` finite."""
    check_ids_in_range(input_ids, vocab_size)
    check_mask_values("attention_mask", attention_mask)


def check_ids_in_range(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Every id in ``[0, vocab_size)``. Data-dependent (one device sync): switch off with ``check_ids=False``."""
    check_values_in("input_ids", input_ids, 0, vocab_size - 1, f"[0, {vocab_size}) (the rows of weight)", "token id ")


def check_values_in(name: str, values: torch.Tensor, low: int, high: int, bounds: str, found: str = "") -> None:
    """Every value of the integer tensor ``values`` in ``[low, high]`` (an empty one passes), else a ``ValueError``
    ``"<name> must be in <bounds>, found <found><value>"`` with the first bound crossed. One device sync (the smallest
    and largest value read on the host): the data checks that ``check_ids=False`` switches off."""
    if values.numel() == 0:
        return
    smallest, largest = (int(v) for v in torch.aminmax(values))
    if smallest < low or largest > high:
        raise ValueError(f"{name} must be in {bounds}, found {found}{smallest if smallest < low else largest}")


@functools.cache
def device_memory(device: torch.device) -> int | None:
    """Bytes of memory on ``device`` (host RAM for the CPU), or None where it cannot be known."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


def _bytes(count: int) -> str:
    """``count`` bytes in a readable unit, e.g. ``"70 TiB"``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    power = min(len(units) - 1, max(0, (count.bit_length() - 1) // 10))
    return f"{count / 1024**power:.3g} {units[power]}"


def check_output_sizes(
    sources: str, device: torch.device, outputs: dict[str, tuple[tuple[int, ...], torch.dtype]]
) -> None:
    """Refuse a call whose outputs (``name -> (shape, dtype)``) cannot be allocated: one holding more elements than
    int64 indexing addresses, or all together more bytes than ``device`` has memory. ``sources`` names the
    arguments whose sizes give the shapes (the message leads with it). Skipped while ``torch.compile`` traces (the
    shapes may be symbolic)."""
    if torch.compiler.is_compiling():
        return
    total = 0
    for name, (shape, dtype) in outputs.items():
        numel = math.prod(shape)
        if numel > MAX_NUMEL:
            raise ValueError(f"{sources} give {name} the shape {tuple(shape)}: more than 2**63 - 1 elements")
        total += numel * dtype.itemsize
    memory = device_memory(device)
    if memory is not None and total > memory:
        listing = ", ".join(f"{name} {tuple(shape)}" for name, (shape, _) in outputs.items())
        raise ValueError(
            f"{sources} ask for outputs of {_bytes(total)} ({listing}), more than the {_bytes(memory)} of memory "
            f"on {device}"
        )


def check_int32_index(what: str, numel: int, sources: str) -> None:
    """Refuse more than 2**31 - 1 elements where a Triton kernel keys something (dropout) by an int32 index."""
    if numel >= 2**31:
        raise ValueError(
            f"{sources} give {numel} {what}, but the Triton kernels key dropout by an int32 element index "
            "(at most 2**31 - 1); use backend='torch' or split the batch"
        )


def validate_params(params: Params, backend: str | None, **others: torch.Tensor | None) -> str:
    """Method parameters: each ``name -> (value, ndim, layout)`` must be a tensor of that rank, on one device with
    them and with ``others`` (already checked tensors, or None), floating point for the resolved backend, which is
    returned, and all of one dtype."""
    for name, (value, ndim, layout) in params.items():
        check_tensor(name, value, ndim, layout)
    tensors = {name: value for name, (value, _, _) in params.items()}
    device = check_same_device(**others, **tensors)
    backend = resolve_backend(backend, device)
    for name, value in tensors.items():
        check_float(name, value, backend)
    check_same_dtype(tensors)
    return backend


def check_width(name: str, value: torch.Tensor, layout: str, hidden: int, source: str) -> None:
    """The last dimension of ``value`` equals ``hidden``, the width that ``source`` gives."""
    if value.shape[-1] != hidden:
        raise ValueError(f"{name} must have shape {layout} with d = {source} = {hidden}, got {tuple(value.shape)}")


def check_embed_inputs(input_ids: object, weight: object, attention_mask: object, backend: str) -> None:
    """The arguments every prompt-embedding op shares: ids ``(B, L)``, a frozen table ``(V, d)`` and an optional
    mask ``(B, L)``."""
    ids = check_tensor("input_ids", input_ids, 2, "(B, L)")
    if ids.dtype not in TOKEN_ID_DTYPES:
        raise TypeError(f"input_ids must hold int64 or int32 token ids, got {ids.dtype}")
    table = check_tensor("weight", weight, 2, "(V, d)")
    check_float("weight", table, backend)
    if table.shape[1] == 0:
        raise ValueError(f"weight must have shape (V, d) with d >= 1, got {tuple(table.shape)}")
    if table.requires_grad:
        raise ValueError(
            "weight (the word-embedding table) requires grad, but it is frozen in prompt tuning and gets no "
            "gradient: call weight.requires_grad_(False) (or freeze the model) first"
        )
    check_mask("attention_mask", attention_mask, tuple(ids.shape), "(B, L) like input_ids")


def validate_embed_call(
    input_ids: object, weight: object, attention_mask: object, backend: str | None, params: Params
) -> str:
    """The front half of every prompt-embedding entry: tensors and ranks, one device, the backend, then dtypes and
    the shared shape rules. ``params`` maps each method parameter's name to ``(value, ndim, layout)``, the dense
    ``prompt (m, d)`` included where the method has one (it must then match the table's width). Returns the
    resolved backend."""
    check_tensor("input_ids", input_ids, 2, "(B, L)")
    check_tensor("weight", weight, 2, "(V, d)")
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask, 2, "(B, L)")
    backend = validate_params(params, backend, input_ids=input_ids, weight=weight, attention_mask=attention_mask)
    check_embed_inputs(input_ids, weight, attention_mask, backend)
    if "prompt" in params:
        prompt, _, layout = params["prompt"]
        check_width("prompt", prompt, layout, weight.shape[1], "weight.shape[1]")
    return backend


def check_vector(
    name: str, value: object, size: int, source: str, dtypes: tuple[torch.dtype, ...] | None
) -> torch.Tensor:  # fmt: skip
    """``value`` is a ``(size,)`` tensor (``source`` says where ``size`` comes from) of one of ``dtypes`` (None:
    any floating dtype; else integer dtypes, int64 or int32)."""
    value = check_tensor(name, value, 1, f"({source},)")
    if dtypes is None and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{name} must hold int64 or int32 values, got {value.dtype}")
    if value.shape[0] != size:
        raise ValueError(f"{name} must have shape ({source},) = ({size},), got {tuple(value.shape)}")
    return value


def check_bank(
    input_ids: torch.Tensor, weight: torch.Tensor, prompts: torch.Tensor, prompt_lengths: object,
    adapter_index: object, vectors: dict[str, tuple[object, tuple[torch.dtype, ...] | None]],
) -> None:  # fmt: skip
    """The bank arguments every mixed-adapter op shares (after :func:`validate_embed_call` has checked the tensors,
    ``prompts (N, m_max, d)`` among them): ``prompts`` of the table's width with ``N, m_max >= 1``,
    ``prompt_lengths (N,)`` and ``adapter_index (B,)`` int64/int32, then each of ``vectors`` (``name -> (value,
    dtypes)`` as in :func:`check_vector`) an ``(N,)`` vector, all on ``input_ids``' device."""
    check_width("prompts", prompts, "(N, m_max, d)", weight.shape[1], "weight.shape[1]")
    num, slots, _ = prompts.shape
    if num == 0 or slots == 0:
        raise ValueError(
            f"prompts must have shape (N, m_max, d) with N >= 1 adapters and m_max >= 1 prompt rows, got "
            f"{tuple(prompts.shape)}: the bank is empty"
        )
    check_vector("prompt_lengths", prompt_lengths, num, "N", TOKEN_ID_DTYPES)
    for name, (value, dtypes) in vectors.items():
        check_vector(name, value, num, "N", dtypes)
    check_vector("adapter_index", adapter_index, input_ids.shape[0], "B", TOKEN_ID_DTYPES)
    others = {"prompt_lengths": prompt_lengths, **{name: value for name, (value, _) in vectors.items()}}
    for name, value in {**others, "adapter_index": adapter_index}.items():
        if value.device != input_ids.device:
            raise ValueError(f"{name} must be on input_ids' device {input_ids.device}, got {value.device}")


def check_adapter_indices(adapter_index: torch.Tensor, num: int) -> None:
    """Every value of the integer tensor ``adapter_index`` in ``[-1, N)`` (``N = num`` adapters; one device sync
    unless it is on the host)."""
    check_values_in(
        "adapter_index", adapter_index, -1, num - 1,
        f"[-1, {num}) (-1: the base model, else a row of the bank of N = {num} adapters)",
    )  # fmt: skip


def check_bank_indices(prompt_lengths: torch.Tensor, adapter_index: torch.Tensor, num_slots: int) -> None:
    """The data checks every mixed-adapter op shares (``check_ids=False`` skips them): every adapter index in
    ``[-1, N)`` and every prompt length in ``[1, m_max]`` (``m_max = num_slots``)."""
    num = prompt_lengths.shape[0]
    check_adapter_indices(adapter_index, num)
    check_values_in(
        "prompt_lengths", prompt_lengths, 1, num_slots, f"[1, m_max] = [1, {num_slots}] (m_max = prompts.shape[1])"
    )


def check_embed_sizes(input_ids: torch.Tensor, weight: torch.Tensor, num_prompt: int, prompt_source: str,
                      attention_mask: torch.Tensor | None) -> None:  # fmt: skip
    """The outputs of a prompt-embedding op, ``(B, m+L, d)`` embeddings and the ``(B, m+L)`` mask, fit in memory;
    ``prompt_source`` names the argument that gives ``m``."""
    batch, seq_len = input_ids.shape
    total = num_prompt + seq_len
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.int64
    sources = f"input_ids (B, L) = {tuple(input_ids.shape)}, {prompt_source} and weight (V, d) = {tuple(weight.shape)}"
    outputs = {
        "inputs_embeds (B, m+L, d)": ((batch, total, weight.shape[1]), weight.dtype),
        "the mask (B, m+L)": ((batch, total), mask_dtype),
    }
    check_output_sizes(sources, weight.device, outputs)
