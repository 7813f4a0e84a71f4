"""Property-based campaign of bad and edge inputs over every functional entry, on both backends.

Each example builds a valid call on tiny random shapes (batch and sequence may be empty), then changes one argument:
either to a bad value (wrong type, rank, size, dtype, mixed dtypes, non-finite values, invalid empty dims, sizes no
memory holds, the meta device, out-of-range ids or indices, bad scalars), and the call must raise ValueError or
TypeError whose message names that argument; or to a valid edge (non-contiguous or expanded tensors, other mask and
table dtypes, NumPy scalars, fp64 parameters on the torch backend, eval-mode dropout), and the outputs must match
``prompt_ops/ops/reference.py``. Either way torch's grad mode is the same after the call.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prompt_ops
from prompt_ops.ops import reference
from tests.helpers import LOW_PRECISION, tolerances

BACKENDS = ["torch", "triton"]
HUGE = 2**40
VOCAB = 7
FLOAT_ROLES = ("table", "param", "hidden")
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run; nothing written to a database
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclasses.dataclass
class Call:
    """One call of a public entry: ``args`` by name, the first ``positional`` of them passed positionally."""

    entry: str
    args: dict[str, object]
    positional: tuple[str, ...]
    roles: dict[str, str]  # tensor arguments: "ids", "table", "param", "mask", "hidden", "index"
    dims: dict[str, int]

    def run(self):
        fn = getattr(prompt_ops, self.entry)
        keywords = {k: v for k, v in self.args.items() if k not in self.positional}
        return fn(*[self.args[k] for k in self.positional], **keywords)

    def replaced(self, name: str, value: object) -> Call:
        return dataclasses.replace(self, args={**self.args, name: value})

    @property
    def params(self) -> list[str]:
        return [name for name, role in self.roles.items() if role == "param"]


# ----------------------------------------------------------------------------------------------------------------
# valid calls
# ----------------------------------------------------------------------------------------------------------------


def _tensor(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    """Random normal values drawn on the CPU from ``gen``, moved to the default device."""
    return (scale * torch.randn(shape, generator=gen)).to(torch.empty(0).device)


def _param(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return _tensor(gen, *shape, scale=0.5).requires_grad_(True)


def _ids(gen, batch, seq_len):
    return torch.randint(0, VOCAB, (batch, seq_len), generator=gen).to(torch.empty(0).device)


def _mask(draw, gen, batch, seq_len, right_padded=False):
    """None or a ``(B, L)`` 0/1 mask of a drawn dtype; right-padded with every row non-empty when asked."""
    kind = draw(st.sampled_from([None, "int64", "bool", "float32", "int32"]))
    if kind is None:
        return None
    if right_padded:
        lengths = torch.randint(1, seq_len + 1, (batch,), generator=gen)
        mask = torch.arange(seq_len)[None, :] < lengths[:, None]
    else:
        mask = torch.rand((batch, seq_len), generator=gen) > 0.3
    return mask.to(getattr(torch, kind)).to(torch.empty(0).device)


def _embed_base(draw, gen, min_prompt=0):
    batch, seq_len, hidden = draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(st.integers(1, 5))
    num_prompt = draw(st.integers(min_prompt, 2))
    args = {"input_ids": _ids(gen, batch, seq_len), "weight": _tensor(gen, VOCAB, hidden)}
    dims = {"B": batch, "L": seq_len, "d": hidden, "m": num_prompt}
    return args, dims


def _embed_keywords(draw, gen, dims):
    return {"attention_mask": _mask(draw, gen, dims["B"], dims["L"]), "check_ids": None}


EMBED_ROLES = {"input_ids": "ids", "weight": "table", "attention_mask": "mask"}


def build_prompt_embed(draw, gen, backend):
    args, dims = _embed_base(draw, gen)
    args["prompt"] = _param(gen, dims["m"], dims["d"])
    args.update(_embed_keywords(draw, gen, dims), backend=backend)
    roles = {**EMBED_ROLES, "prompt": "param"}
    return Call("prompt_embed", args, ("input_ids", "weight", "prompt"), roles, dims)


def _lora(draw, gen, dims):
    dims["r"], dims["L_max"] = draw(st.integers(1, 3)), dims["L"] + draw(st.integers(0, 2))
    return {"lora_a": _param(gen, dims["L_max"], dims["r"]), "lora_b": _param(gen, dims["r"], dims["d"])}


def build_dept_embed(draw, gen, backend):
    args, dims = _embed_base(draw, gen)
    args["prompt"] = _param(gen, dims["m"], dims["d"])
    args.update(_lora(draw, gen, dims))
    args.update(scale=0.7, **_embed_keywords(draw, gen, dims), backend=backend)
    roles = {**EMBED_ROLES, "prompt": "param", "lora_a": "param", "lora_b": "param"}
    return Call("dept_embed", args, ("input_ids", "weight", "prompt", "lora_a", "lora_b"), roles, dims)


ADEPT_PARAMS = ("prompt", "w_down", "b_down", "w_up", "b_up")


def build_adept_embed(draw, gen, backend):
    args, dims = _embed_base(draw, gen)
    d, r = dims["d"], draw(st.integers(1, 3))
    dims["r"] = r
    shapes = {"prompt": (dims["m"], d), "w_down": (d, r), "b_down": (r,), "w_up": (r, d), "b_up": (d,)}
    args.update({name: _param(gen, *shape) for name, shape in shapes.items()})
    args.update(**_embed_keywords(draw, gen, dims), dropout_p=0.0, training=False, seed=None, backend=backend)
    roles = {**EMBED_ROLES, **dict.fromkeys(ADEPT_PARAMS, "param")}
    return Call("adept_embed", args, ("input_ids", "weight", *ADEPT_PARAMS), roles, dims)


def _factors(draw, gen, dims):
    pool, rank = draw(st.sampled_from([1, 2])), draw(st.integers(1, 3))
    rows = pool * draw(st.integers(1, 2))
    dims.update(pool=pool, r=rank, l=rows)
    return {"u": _param(gen, rows, rank), "q": _param(gen, rank), "v": _param(gen, rank, dims["d"])}


def build_lamp_prompt(draw, gen, backend):
    dims = {"d": draw(st.integers(1, 5))}
    args = {**_factors(draw, gen, dims), "pool": dims["pool"], "backend": backend}
    return Call("lamp_prompt", args, ("u", "q", "v"), dict.fromkeys("uqv", "param"), dims)


def build_lamp_embed(draw, gen, backend):
    args, dims = _embed_base(draw, gen)
    args.update(_factors(draw, gen, dims))
    args.update(pool=dims["pool"], **_embed_keywords(draw, gen, dims), backend=backend)
    roles = {**EMBED_ROLES, **dict.fromkeys("uqv", "param")}
    return Call("lamp_embed", args, ("input_ids", "weight", "u", "q", "v"), roles, dims)


EPT_PARAMS = ("prompt", "lora_a", "lora_b", "w_down", "w_up", "w_gate", "b_gate")


def _ept_params(draw, gen, dims):
    d = dims["d"]
    dims.update(K=draw(st.integers(1, 2)), h=draw(st.integers(1, 2)))
    params = {"prompt": _param(gen, dims["m"], d), **_lora(draw, gen, dims)}
    dims["L_max"] = max(dims["L_max"], 1)
    params["lora_a"] = _param(gen, dims["L_max"], dims["r"])
    shapes = {"w_down": (dims["K"], d, dims["h"]), "w_up": (dims["K"], dims["h"], d), "w_gate": (d, dims["K"])}
    params.update({name: _param(gen, *shape) for name, shape in shapes.items()}, b_gate=_param(gen, dims["K"]))
    return params


def build_ept_prompt(draw, gen, backend):
    dims = {"d": draw(st.integers(1, 5)), "m": draw(st.integers(1, 2)), "L": 0}
    args = {**_ept_params(draw, gen, dims), "scale": 0.9, "backend": backend}
    return Call("ept_prompt", args, EPT_PARAMS, dict.fromkeys(EPT_PARAMS, "param"), dims)


def build_ept_embed(draw, gen, backend):
    args, dims = _embed_base(draw, gen, min_prompt=1)
    args.update(_ept_params(draw, gen, dims))
    args.update(scale=0.9, **_embed_keywords(draw, gen, dims), backend=backend)
    roles = {**EMBED_ROLES, **dict.fromkeys(EPT_PARAMS, "param")}
    return Call("ept_embed", args, ("input_ids", "weight", *EPT_PARAMS), roles, dims)


LPT_PARAMS = ("w_down", "b_down", "w_up", "b_up")


def _build_lpt(entry):
    def build(draw, gen, backend):
        batch, seq_len, d = draw(st.integers(0, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
        n, h, mode = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.sampled_from(["naive", "pool", "max"]))
        width = n * d if mode == "naive" else d
        shapes = {"w_down": (d, h), "b_down": (h,), "w_up": (h, width), "b_up": (width,)}
        args = {"hidden": _tensor(gen, batch, seq_len, d), **{k: _param(gen, *s) for k, s in shapes.items()}}
        index = None
        if mode == "naive" and draw(st.booleans()):
            index = torch.randint(0, seq_len, (batch,), generator=gen).to(torch.empty(0).device)
        mask = _mask(draw, gen, batch, seq_len, right_padded=mode != "naive")
        args.update(num_tokens=n, index=index, attention_mask=mask, mode=mode, dropout_p=0.0, training=False)
        args.update(seed=None, backend=backend)
        roles = {"hidden": "hidden", **dict.fromkeys(LPT_PARAMS, "param"), "index": "index", "attention_mask": "mask"}
        dims = {"B": batch, "L": seq_len, "d": d, "n": n, "h": h, "width": width}
        return Call(entry, args, ("hidden", *LPT_PARAMS), roles, dims)

    return build


BUILDERS = {
    "prompt_embed": build_prompt_embed,
    "dept_embed": build_dept_embed,
    "adept_embed": build_adept_embed,
    "lamp_prompt": build_lamp_prompt,
    "lamp_embed": build_lamp_embed,
    "ept_prompt": build_ept_prompt,
    "ept_embed": build_ept_embed,
    "lpt_prompt": _build_lpt("lpt_prompt"),
    "lpt_insert": _build_lpt("lpt_insert"),
}


# ----------------------------------------------------------------------------------------------------------------
# the reference
# ----------------------------------------------------------------------------------------------------------------


def _reference(call: Call):
    """The reference outputs of a valid call, in fp64 from the same inputs (masks and ids as given)."""
    a = {k: (v.detach().double() if call.roles.get(k) in FLOAT_ROLES else v) for k, v in call.args.items()}
    ids, mask = a.get("input_ids"), a.get("attention_mask")
    if call.entry == "prompt_embed":
        return reference.prompt_embed(ids, a["weight"], a["prompt"], mask)
    if call.entry == "dept_embed":
        return reference.dept_embed(ids, a["weight"], a["prompt"], a["lora_a"], a["lora_b"], a["scale"], mask)
    if call.entry == "adept_embed":
        return reference.adept_embed(ids, a["weight"], *[a[k] for k in ADEPT_PARAMS], mask)
    if call.entry == "lamp_prompt":
        return reference.lamp_prompt(a["u"], a["q"], a["v"], int(a["pool"]))
    if call.entry == "lamp_embed":
        return reference.lamp_embed(ids, a["weight"], a["u"], a["q"], a["v"], int(a["pool"]), mask)
    if call.entry == "ept_prompt":
        return reference.ept_prompt(*[a[k] for k in EPT_PARAMS], float(a["scale"]))
    if call.entry == "ept_embed":
        return reference.ept_embed(ids, a["weight"], *[a[k] for k in EPT_PARAMS], float(a["scale"]), mask)
    lengths_mask = mask.to(torch.int64) if mask is not None else None  # the reference slices by the lengths
    prompt = reference.lpt_prompt(
        a["hidden"], *[a[k] for k in LPT_PARAMS], int(a["num_tokens"]), a["index"], lengths_mask, a["mode"]
    )
    if call.entry == "lpt_prompt":
        return prompt
    return reference.lpt_insert(prompt, a["hidden"].to(call.args["hidden"].dtype), mask)


def _assert_matches_reference(call: Call, outputs) -> None:
    expected = _reference(call)
    if isinstance(expected, torch.Tensor):
        outputs, expected = (outputs,), (expected,)
    assert len(outputs) == len(expected)
    dtypes = [t.dtype for k, t in call.args.items() if call.roles.get(k) in FLOAT_ROLES]
    low = next((dtype for dtype in dtypes if dtype in LOW_PRECISION), torch.float32)
    embeds, *mask = outputs
    want, *want_mask = expected
    assert embeds.shape == want.shape
    torch.testing.assert_close(embeds.detach().double(), want.detach().double(), **tolerances(low, dot=True))
    if mask:
        assert mask[0].dtype == want_mask[0].dtype and torch.equal(mask[0], want_mask[0].to(mask[0].device))


# ----------------------------------------------------------------------------------------------------------------
# changes: a bad value (the call must name the argument) or a valid edge (the call must match the reference)
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Change:
    name: str  # the argument changed
    value: object
    valid: bool
    kind: str

    def __repr__(self) -> str:
        return f"Change({self.kind} {self.name}, valid={self.valid})"


def _noncontiguous(x: torch.Tensor) -> torch.Tensor:
    """The same values at other strides: transposed storage for 2-D and more, every other element for 1-D."""
    if x.dim() >= 2:
        return x.detach().transpose(0, -1).contiguous().transpose(0, -1)
    return torch.stack([x.detach(), x.detach()], -1)[:, 0]


def _expanded(x: torch.Tensor) -> torch.Tensor:
    """Row 0 repeated with stride 0 (a new valid value)."""
    return x.detach()[:1].expand_as(x)


def _huge(x: torch.Tensor) -> torch.Tensor:
    """A stride-0 view with ``HUGE`` rows: no memory, but outputs no machine can hold."""
    return torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device).expand(HUGE, *x.shape[1:])


def _wrong_types(x: torch.Tensor, required: bool) -> list:
    values = [x.detach().tolist(), x.detach().cpu().numpy(), True, "x", 1.5]
    return values + ([None] if required else [])


def _wrong_ranks(x: torch.Tensor) -> list:
    """One more dimension, and one fewer (a 1-D tensor becomes a 0-D one)."""
    return [x.detach().unsqueeze(0), x.detach().flatten(0, 1) if x.dim() >= 2 else x.detach().sum()]


def bad_sizes(call: Call) -> dict[str, list[torch.Tensor]]:
    """Per argument, tensors whose shape is invalid for this call (zero sizes where >= 1 is required, or a size
    that disagrees with the other arguments)."""
    dims, args, out = call.dims, call.args, {}

    def add(name, *shape):
        out.setdefault(name, []).append(torch.zeros(shape, dtype=args[name].dtype, device=args[name].device))

    if "weight" in args:
        add("weight", VOCAB, 0)
        if isinstance(args["attention_mask"], torch.Tensor):
            add("attention_mask", dims["B"], dims["L"] + 1)
    if call.entry in ("prompt_embed", "dept_embed", "adept_embed"):
        add("prompt", dims["m"], dims["d"] + 1)
    if call.entry in ("dept_embed", "ept_prompt", "ept_embed"):
        add("lora_a", dims["L_max"], dims["r"] + 1)
        add("lora_a", dims["L_max"], 0)
        add("lora_b", dims["r"] + 1, dims["d"])
        add("lora_b", dims["r"], dims["d"] + 1)
        if dims["L"]:
            add("lora_a", dims["L"] - 1, dims["r"])
        if "input_ids" in args and args["attention_mask"] is None:
            add("input_ids", dims["B"], dims["L_max"] + 1)
    if call.entry == "adept_embed":
        d, r = dims["d"], dims["r"]
        add("w_down", d + 1, r), add("w_down", d, 0), add("b_down", r + 1), add("w_up", r, d + 1)
        add("b_up", d + 1)
    if call.entry in ("lamp_prompt", "lamp_embed"):
        rows, r, d = dims["l"], dims["r"], dims["d"]
        add("u", rows, r + 1), add("u", 0, r), add("q", r + 1), add("v", r + 1, d)
        add("v", r, 0 if call.entry == "lamp_prompt" else d + 1)
    if call.entry in ("ept_prompt", "ept_embed"):
        d, k, h, m = dims["d"], dims["K"], dims["h"], dims["m"]
        add("prompt", 0, d), add("lora_a", 0, dims["r"])
        add("w_down", k, d + 1, h), add("w_down", k, d, 0), add("w_up", k, h + 1, d), add("w_gate", d, k + 1)
        add("b_gate", k + 1)
        if call.entry == "ept_prompt":
            add("prompt", m, d + 1), add("prompt", m, 0)
    if call.entry in ("lpt_prompt", "lpt_insert"):
        b, seq_len, d, h, width = dims["B"], dims["L"], dims["d"], dims["h"], dims["width"]
        add("hidden", b, 0, d), add("hidden", b, seq_len, 0), add("hidden", b, seq_len, d + 1)
        add("w_down", d + 1, h), add("w_down", d, 0), add("b_down", h + 1), add("w_up", h, width + 1)
        add("b_up", width + 1)
        if isinstance(args["index"], torch.Tensor):
            add("index", b + 1)
        if isinstance(args["attention_mask"], torch.Tensor):
            add("attention_mask", b, seq_len + 1)
    return out


def huge_values(call: Call) -> dict[str, object]:
    """Arguments that, set so, ask for outputs (or intermediates) no memory holds."""
    args, dims = call.args, call.dims
    out = {}
    if "input_ids" in args and dims["m"] + dims["L"] > 0:
        out["input_ids"] = _huge(args["input_ids"])
    if call.entry in ("lpt_prompt", "lpt_insert"):
        out.update(hidden=_huge(args["hidden"]), num_tokens=HUGE)
    if call.entry in ("lamp_prompt",):
        out["u"] = _huge(args["u"])
    if call.entry in ("ept_prompt", "ept_embed"):
        out["lora_a"] = _huge(args["lora_a"])
        if call.entry == "ept_prompt":
            out["prompt"] = _huge(args["prompt"])
    return out


BAD_SCALARS = {
    "scale": ["1.0", None, True, float("nan"), float("inf"), -float("inf"), torch.tensor(1.0)],
    "pool": [0, -1, 1.5, "2", None, True],
    "num_tokens": [0, -1, 1.5, "2", None, True],
    "dropout_p": [-0.1, 1.0, float("nan"), "0.1", None, True],
    "training": [1, "yes", None],
    "seed": [-1, 2**31, 1.5, "3", True],
    "mode": ["mean", None, 1],
    "backend": ["cuda", 3, "Torch"],
    "check_ids": ["no", 1],
}


def _valid_scalars(call: Call) -> list[Change]:
    args = call.args
    changes = [Change("backend", None, True, "auto backend")]
    if "scale" in args:
        changes.append(Change("scale", np.float32(0.5), True, "numpy scale"))
    if "pool" in args:
        changes.append(Change("pool", np.int64(args["pool"]), True, "numpy pool"))
    if "num_tokens" in args:
        changes.append(Change("num_tokens", np.int64(args["num_tokens"]), True, "numpy num_tokens"))
    if "dropout_p" in args:
        changes.append(Change("dropout_p", 0.5, True, "dropout in eval"))
        changes.append(Change("seed", np.int64(3), True, "numpy seed"))
    if "check_ids" in args:
        changes.append(Change("check_ids", False, True, "unchecked valid ids"))
    return changes


def _bad_scalars(call: Call) -> list[Change]:
    changes = [Change(name, value, False, "bad scalar") for name in BAD_SCALARS if name in call.args
               for value in BAD_SCALARS[name]]  # fmt: skip
    if "pool" in call.args:
        changes.append(Change("pool", call.dims["l"] + 1, False, "pool not dividing l"))
    if "mode" in call.args and call.dims["n"] > 1:
        other = "pool" if call.args["mode"] == "naive" else "naive"
        changes.append(Change("mode", other, False, "mode of other w_up"))
    if "num_tokens" in call.args and call.args["mode"] == "naive":
        changes.append(Change("num_tokens", call.dims["n"] + 1, False, "num_tokens of other w_up"))
    return changes


def _tensor_changes(call: Call, backend: str) -> list[Change]:
    changes = []
    for name, role in call.roles.items():
        x = call.args[name]
        if x is None:
            continue
        changes += [Change(name, v, False, "wrong type") for v in _wrong_types(x, role not in ("mask", "index"))]
        changes += [Change(name, v, False, "wrong rank") for v in _wrong_ranks(x)]
        changes.append(Change(name, x.detach().to("meta"), False, "meta device"))
        changes.append(Change(name, x.detach().to(torch.complex64), False, "complex"))
        changes.append(Change(name, _noncontiguous(x).requires_grad_(x.requires_grad), True, "non-contiguous"))
        if x.numel():
            changes.append(Change(name, _expanded(x), True, "expanded"))
        if role in ("ids", "index"):
            changes += [Change(name, x.to(dtype), False, "dtype") for dtype in (torch.float32, torch.bool, torch.int16)]
            changes.append(Change(name, x.to(torch.int32), True, "int32"))
            if x.numel():
                limit = VOCAB if role == "ids" else call.dims["L"]
                for bad in (-1, limit):
                    changes.append(Change(name, torch.full_like(x, bad), False, "out of range"))
        if role in FLOAT_ROLES:
            changes += [Change(name, x.detach().to(dtype), False, "dtype") for dtype in (torch.int64, torch.bool)]
        if role == "table":
            changes.append(Change(name, x.detach().clone().requires_grad_(True), False, "trainable table"))
            for dtype in (torch.float16, torch.bfloat16, torch.float64):
                valid = dtype != torch.float64 or backend == "torch"
                changes.append(Change(name, x.to(dtype), valid, "table dtype"))
        if role == "hidden":
            for dtype in (torch.bfloat16, torch.float64):
                valid = dtype != torch.float64 or backend == "torch"
                changes.append(Change(name, x.to(dtype), valid, "hidden dtype"))
        if role == "param":
            alone = len(call.params) == 1
            for dtype in (torch.float16, torch.float64):
                valid = alone and (dtype != torch.float64 or backend == "torch")
                changes.append(Change(name, x.detach().to(dtype).requires_grad_(True), valid, "mixed dtypes"))
        if role == "mask":
            for dtype in (torch.bool, torch.uint8, torch.float64, torch.int32):
                changes.append(Change(name, x.to(dtype), True, "mask dtype"))
            if x.numel():
                for bad in (float("nan"), float("inf")):
                    changes.append(Change(name, torch.full_like(x, bad, dtype=torch.float32), False, "non-finite mask"))
                binary = call.args.get("mode") not in ("pool", "max")  # APPG/MPPG need 0/1; the others copy it
                changes.append(Change(name, x.to(torch.int64) * 2, binary, "mask of 2s"))
    for name, shapes in bad_sizes(call).items():
        changes += [Change(name, value, False, "bad size") for value in shapes]
    changes += [Change(name, value, False, "huge") for name, value in huge_values(call).items()]
    if backend == "torch" and len(call.params) > 1:
        every = {name: call.args[name].detach().double().requires_grad_(True) for name in call.params}
        changes.append(Change(call.params[0], every, True, "all parameters fp64"))
    return changes


def changes_for(call: Call, backend: str) -> list[Change]:
    unchanged = Change("backend", call.args["backend"], True, "unchanged")
    return [unchanged, *_tensor_changes(call, backend), *_bad_scalars(call), *_valid_scalars(call)]


def apply(call: Call, change: Change) -> Call:
    if change.kind == "all parameters fp64":
        return dataclasses.replace(call, args={**call.args, **change.value})
    return call.replaced(change.name, change.value)


# ----------------------------------------------------------------------------------------------------------------
# the campaign
# ----------------------------------------------------------------------------------------------------------------


def run_checked(call: Call, grad_enabled: bool):
    """Run ``call`` under the given grad mode; the mode must be the same afterwards, whatever the outcome."""
    with torch.set_grad_enabled(grad_enabled):
        try:
            return call.run()
        finally:
            assert torch.is_grad_enabled() == grad_enabled, "the call changed torch's grad mode"


def check(call: Call, change: Change, grad_enabled: bool) -> None:
    changed = apply(call, change)
    if change.valid:
        outputs = run_checked(changed, grad_enabled)
        _assert_matches_reference(changed, outputs)
        return
    with pytest.raises((ValueError, TypeError)) as caught:
        run_checked(changed, grad_enabled)
    assert type(caught.value) in (ValueError, TypeError), f"{change}: {type(caught.value).__name__} {caught.value}"
    assert re.search(rf"\b{re.escape(change.name)}\b", str(caught.value)), f"{change}: {caught.value}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", list(BUILDERS))
@SETTINGS
@given(data=st.data())
def test_one_changed_argument(entry: str, backend: str, data) -> None:
    """A valid call (empty batches, sequences and prompts included) with at most one argument changed: the class of
    change first, so that every class is drawn about as often, then a change of that class."""
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    call = BUILDERS[entry](data.draw, gen, backend)
    by_kind: dict[str, list[Change]] = {}
    for change in changes_for(call, backend):
        by_kind.setdefault(change.kind, []).append(change)
    kind = data.draw(st.sampled_from(sorted(by_kind)), label="kind")
    change = data.draw(st.sampled_from(by_kind[kind]), label="change")
    check(call, change, data.draw(st.booleans(), label="grad_enabled"))
