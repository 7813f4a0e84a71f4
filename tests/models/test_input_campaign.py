"""Property-based campaign of bad and edge inputs over the method modules and the model integration.

Each example takes a valid call (a module constructor or forward, ``attach`` with a config, a tuned model's forward or
``generate``, ``load_adapter`` on a saved folder) and replaces one argument, config field, file field or tensor with a
value drawn from a pool that mixes bad values (wrong types, sizes no memory holds, non-finite numbers, wrong shapes
and dtypes, out-of-range ids) and valid edges. The call must either raise ValueError or TypeError whose message names
what was replaced (or the file it came from), or succeed with a valid result. After every refused call the model's
requires_grad flags, its state_dict values, its input embedding module, the hooks of every submodule and torch's grad
mode are exactly what they were (:class:`tests.models.model_state.ModelState`). Tiny models are built once per module;
a successful attach or load is undone before the next example.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import prompt_ops
from prompt_ops.models import (
    ADePTConfig,
    DePTConfig,
    EPTConfig,
    LAMPConfig,
    LPTConfig,
    PromptTuningConfig,
    attach,
    load_adapter,
)
from prompt_ops.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from tests.models.model_state import ModelState
from tests.models.test_lpt import HIDDEN, VOCAB, tiny

pytest.importorskip("safetensors")
BACKENDS = ["torch", "triton"]
SETTINGS = settings(
    max_examples=75,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ----------------------------------------------------------------------------------------------------------------
# value pools: bad values and valid edges, per kind of argument
# ----------------------------------------------------------------------------------------------------------------

HUGE = [2**31, 2**40, 2**70]
INTS = [-1, 0, 1, 2, 3, *HUGE, 2.0, 1.5, "2", None, True, np.int64(2), torch.tensor(2), [2]]
FLOATS = [8.0, 1, 1e-30, 0, -1.0, math.inf, -math.inf, math.nan, 1e300, "8", None, True, np.float32(2.0)]
PROBABILITIES = [0.0, 0, 0.1, 0.99, 1.0, 1, -0.1, math.nan, math.inf, "0.1", None, False]
BACKEND_VALUES = [None, "auto", "torch", "triton", "cuda", "", 3]
TOKEN_IDS = [
    None,
    [1],
    [1, 2, 3],
    (4, 5),
    range(3),
    torch.tensor([2, 3]),
    torch.tensor([2, 3], dtype=torch.int32),
    np.array([3, 1]),
    [1.7],
    "ab",
    [[1, 2], [3]],
    [True],
    5,
    torch.tensor([1.0]),
    torch.tensor([[1]]),
    np.array([1.5]),
    [2**70],
    [-1],
    [],
    [VOCAB],
    {1, 2},
]
MODES = ["naive", "pool", "max", None, 3]
READS = [None, "first", "last", "middle", 0]
LAYERS = [None, 1, 0, 2, 3, 4, -1, 1.0, "1", True]


def _pool(argument: str) -> list:
    """The values an argument or config field is replaced with."""
    if argument in ("lora_alpha",):
        return FLOATS
    if argument == "dropout":
        return PROBABILITIES
    if argument == "init_token_ids":
        return TOKEN_IDS
    if argument == "backend":
        return BACKEND_VALUES
    if argument == "mode":
        return MODES
    if argument == "read":
        return READS
    if argument == "layer":
        return LAYERS
    return INTS


def _raises_naming(call, names: tuple[str, ...], model: nn.Module):
    """``call()``'s result, or None if it raised a ValueError or TypeError naming one of ``names``; a refused call
    must leave ``model`` (and the grad mode) exactly as it was. Any other exception fails the example."""
    before = ModelState.of(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tiny configs' token-id notices
            return call()
    except (ValueError, TypeError) as err:
        message = str(err)
        assert any(name in message for name in names), f"{type(err).__name__} names none of {names}: {message}"
        before.assert_unchanged(model, f"the refused call ({message})")
        return None


def _check_embed_output(result, batch: int, rows: int, seq_len: int, hidden: int) -> None:
    out, mask = result
    assert out.shape == (batch, rows + seq_len, hidden) and mask.shape == (batch, rows + seq_len)
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------------------------
# module constructors
# ----------------------------------------------------------------------------------------------------------------

MODULE_KWARGS = {
    "PromptTuning": {"num_tokens": 3},
    "DePT": {"num_tokens": 3, "rank": 2, "max_length": 5, "lora_alpha": 4.0},
    "ADePT": {"num_tokens": 3, "rank": 2, "dropout": 0.1},
    "LAMP": {"num_tokens": 4, "rank": 2, "pool": 2},
    "EPT": {"num_tokens": 3, "rank": 2, "max_length": 5, "num_subspaces": 2, "subspace_rank": 2, "lora_alpha": 4.0},
}
PROMPT_ARGS = ["init_token_ids", "backend"]


def _rows(module) -> int:
    return getattr(module, "num_prompt_rows", module.num_tokens)


@st.composite
def constructor_calls(draw):
    cls = draw(st.sampled_from(sorted(MODULE_KWARGS)))
    kwargs = dict(MODULE_KWARGS[cls])
    argument = draw(st.sampled_from([*kwargs, *PROMPT_ARGS]))
    kwargs[argument] = draw(st.sampled_from(_pool(argument)))
    return cls, argument, kwargs


@SETTINGS
@given(call=constructor_calls())
def test_module_constructors(call):
    cls, argument, kwargs = call
    embedding = nn.Embedding(VOCAB, HIDDEN)
    module = _raises_naming(lambda: getattr(prompt_ops, cls)(embedding, **kwargs), (argument,), embedding)
    if module is None:
        return
    assert not embedding.weight.requires_grad
    assert all(
        p.dtype == torch.float32 and p.requires_grad for n, p in module.named_parameters() if "embedding" not in n
    )
    seq_len = min(3, getattr(module, "max_length", 3))
    ids = torch.randint(0, VOCAB, (2, seq_len))
    _check_embed_output(module.eval()(ids), 2, _rows(module), seq_len, HIDDEN)


@st.composite
def lpt_constructor_calls(draw):
    kwargs = {"model_dim": HIDDEN, "num_tokens": 2, "hidden_size": 4, "mode": "pool", "dropout": 0.1}
    argument = draw(st.sampled_from([*kwargs, "backend"]))
    kwargs[argument] = draw(st.sampled_from(_pool(argument)))
    return argument, kwargs


@SETTINGS
@given(call=lpt_constructor_calls())
def test_lpt_constructor(call):
    argument, kwargs = call
    module = _raises_naming(lambda: prompt_ops.LPT(**kwargs), (argument,), nn.Module())
    if module is None:
        return
    hidden = torch.randn(2, 5, module.model_dim)
    out, mask = module.eval()(hidden)
    assert out.shape == (2, module.num_tokens + 5, module.model_dim) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------------------------
# module forwards, on both backends
# ----------------------------------------------------------------------------------------------------------------

ID_VALUES = [
    "valid",
    torch.zeros(2, 3, dtype=torch.int32),
    torch.zeros(0, 3, dtype=torch.long),
    torch.zeros(2, 3),
    torch.zeros(3, dtype=torch.long),
    torch.zeros(1, 2, 3, dtype=torch.long),
    torch.full((2, 3), VOCAB),
    torch.full((2, 3), -1),
    torch.zeros(2, 3, dtype=torch.bool),
    torch.zeros(2, 3, dtype=torch.int8),
    [[1, 2, 3]],
    None,
]
MASK_VALUES = [
    None,
    torch.ones(2, 3, dtype=torch.long),
    torch.ones(2, 3, dtype=torch.bool),
    torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
    torch.ones(2, 4, dtype=torch.long),
    torch.ones(3, dtype=torch.long),
    torch.ones(2, 3, dtype=torch.complex64),
    [[1, 1, 1], [1, 1, 1]],
]


@pytest.fixture(scope="module")
def modules() -> dict:
    """One module of every method per backend, over its own embedding."""
    torch.manual_seed(0)
    return {
        (cls, backend): getattr(prompt_ops, cls)(nn.Embedding(VOCAB, HIDDEN), backend=backend, **kwargs).eval()
        for cls, kwargs in MODULE_KWARGS.items()
        for backend in BACKENDS
    }


@SETTINGS
@given(
    cls=st.sampled_from(sorted(MODULE_KWARGS)),
    backend=st.sampled_from(BACKENDS),
    argument=st.sampled_from(["input_ids", "attention_mask", "seed"]),
    index=st.integers(0, len(ID_VALUES) - 1),
    seed=st.sampled_from([None, 0, 7, -1, 2**40, "1", 1.5]),
)
def test_module_forwards(modules, cls, backend, argument, index, seed):
    module = modules[cls, backend]
    ids, mask, kwargs = torch.randint(0, VOCAB, (2, 3)), None, {}
    if argument == "input_ids" and not isinstance(ID_VALUES[index], str):
        ids = ID_VALUES[index]
    if argument == "attention_mask":
        mask = MASK_VALUES[index % len(MASK_VALUES)]
    if argument == "seed":
        if cls != "ADePT":
            return
        module, kwargs = module.train(), {"seed": seed}
    try:
        result = _raises_naming(lambda: module(ids, mask, **kwargs), (argument,), module)
    finally:
        module.eval()
    if result is not None:
        _check_embed_output(result, ids.shape[0], _rows(module), ids.shape[1], HIDDEN)


# ----------------------------------------------------------------------------------------------------------------
# configs + attach
# ----------------------------------------------------------------------------------------------------------------

CONFIGS = {
    "prompt_tuning": PromptTuningConfig(num_tokens=2),
    "dept": DePTConfig(num_tokens=2, rank=2, max_length=8),
    "adept": ADePTConfig(num_tokens=2, rank=2),
    "lamp": LAMPConfig(num_tokens=4, rank=2, pool=2),
    "ept": EPTConfig(num_tokens=2, rank=2, max_length=8, num_subspaces=2, subspace_rank=2),
    "lpt": LPTConfig(layer=1, num_tokens=2, hidden_size=4),
}


FAMILIES = ["bert", "gpt2", "llama", "t5"]


def _tiny(family: str):
    """test_lpt's tiny 4-layer model of ``family`` (with its LM head, but BERT bare)."""
    return tiny(family, head=family != "bert")


@pytest.fixture(scope="module")
def models() -> dict:
    return {family: _tiny(family) for family in FAMILIES}


@contextlib.contextmanager
def _undone(model: nn.Module):
    """Whatever ``attach`` or ``load_adapter`` did to ``model`` inside is undone after (hooks, flags)."""
    before = ModelState.of(model)
    made = []
    try:
        yield made
    finally:
        for tuned in made:
            if hasattr(tuned, "unload"):
                tuned.unload()
        for name, param in model.named_parameters():
            param.requires_grad_(before.requires_grad[name])
    before.assert_unchanged(model, "undoing a successful attach")


def _outputs(tuned, family: str, **kwargs) -> torch.Tensor:
    """The tuned model's main output on valid ids (T5: with a decoder input)."""
    prompt_module = getattr(tuned, "prompt_module", None)
    ids = torch.randint(0, VOCAB, (2, min(4, getattr(prompt_module, "max_length", 4))))
    if family == "t5":
        kwargs["decoder_input_ids"] = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        out = tuned(input_ids=ids, **kwargs)
    return out.last_hidden_state if family == "bert" else out.logits


def _check_tuned(tuned, family: str) -> None:
    assert torch.isfinite(_outputs(tuned, family)).all()
    assert all(not p.requires_grad for p in tuned.base_model.parameters())


@st.composite
def attach_calls(draw):
    method = draw(st.sampled_from(sorted(CONFIGS)))
    config = CONFIGS[method]
    fields = [f.name for f in dataclasses.fields(config)]
    target = draw(st.sampled_from([*fields, "backend", "config", "model"]))
    backend, model = None, None
    if target in fields:
        config = dataclasses.replace(config, **{target: draw(st.sampled_from(_pool(target)))})
    elif target == "backend":
        backend = draw(st.sampled_from(BACKEND_VALUES))
    elif target == "config":
        config = draw(st.sampled_from([None, {"num_tokens": 2}, DePTConfig, config.to_dict(), "dept"]))
    else:
        model = draw(st.sampled_from([None, "gpt2", nn.Linear(2, 2), {}, nn.Embedding(4, 4)]))
    return draw(st.sampled_from(FAMILIES)), target, config, backend, model


@SETTINGS
@given(call=attach_calls())
def test_attach(models, call):
    family, target, config, backend, replaced_model = call
    model = models[family]
    with _undone(model) as made:
        if replaced_model is not None:
            _raises_naming(lambda: attach(replaced_model, config), ("model",), model)
            return
        tuned = _raises_naming(lambda: attach(model, config, backend=backend), (target,), model)
        if tuned is not None:
            made.append(tuned)
            _check_tuned(tuned, family)


# ----------------------------------------------------------------------------------------------------------------
# tuned-model forward and generate
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned_models() -> dict:
    """DePT and LPT on a BERT, a GPT-2 and a LLaMA of their own (never undone: the campaign only calls them)."""
    out = {}
    for family in ("bert", "gpt2", "llama"):
        out[family, "dept"] = attach(_tiny(family), CONFIGS["dept"])
        out[family, "lpt"] = attach(_tiny(family), CONFIGS["lpt"])
    return out


INPUT_VALUES = {
    "input_ids": ID_VALUES[1:],
    "attention_mask": MASK_VALUES[1:],
    "token_type_ids": [torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4), torch.zeros(2, 2, dtype=torch.long)],
    "position_ids": [torch.arange(3)[None], torch.arange(3).expand(2, 3), torch.arange(4)[None], torch.zeros(2, 3)],
    "labels": [
        torch.zeros(2, 3, dtype=torch.long),
        torch.zeros(2, dtype=torch.long),
        torch.zeros(3, dtype=torch.long),
        torch.zeros(2, 4, dtype=torch.long),
        torch.tensor(1),
        [0, 1],
    ],
    "inputs_embeds": [torch.zeros(2, 3, HIDDEN)],
    "use_cache": [True],
}


@SETTINGS
@given(
    family=st.sampled_from(["bert", "gpt2", "llama"]),
    method=st.sampled_from(["dept", "lpt"]),
    argument=st.sampled_from(sorted(INPUT_VALUES)),
    index=st.integers(0, 20),
)
def test_tuned_forward(tuned_models, family, method, argument, index):
    tuned = tuned_models[family, method]
    values = INPUT_VALUES[argument]
    kwargs = {"input_ids": torch.randint(0, VOCAB, (2, 3)), argument: values[index % len(values)]}
    if argument == "inputs_embeds" and method == "lpt":
        del kwargs["input_ids"]  # LPT takes embeddings instead of ids
    if argument == "labels" and family == "bert":
        return  # BertModel has no head and takes no labels
    if argument == "token_type_ids" and family != "bert":
        return
    grad_enabled = index % 2 == 0
    with torch.set_grad_enabled(grad_enabled):
        out = _raises_naming(lambda: tuned(**kwargs), (argument,), tuned)
    assert torch.is_grad_enabled()
    if out is not None:
        hidden = out.last_hidden_state if family == "bert" else out.logits
        assert torch.isfinite(hidden).all()
    if method == "lpt":
        assert tuned._call is None


GENERATE_VALUES = {
    "max_new_tokens": [1, 2, 0, -1, "2", 2.5, True],
    "attention_mask": [torch.ones(1, 3, dtype=torch.long), torch.ones(1, 4, dtype=torch.long), [[1, 1, 1]]],
    "input_ids": [torch.zeros(1, 3), [[1, 2, 3]], torch.full((1, 3), VOCAB)],
    "colour": [3],
    "inputs_embeds": [torch.zeros(1, 3, HIDDEN)],
}


@SETTINGS
@given(
    method=st.sampled_from(["dept", "lpt"]),
    argument=st.sampled_from(sorted(GENERATE_VALUES)),
    index=st.integers(0, 10),
)
def test_tuned_generate(tuned_models, method, argument, index):
    tuned = tuned_models["gpt2", method]
    values = GENERATE_VALUES[argument]
    kwargs = {"input_ids": torch.randint(0, VOCAB, (1, 3)), "max_new_tokens": 2, argument: values[index % len(values)]}
    if argument == "inputs_embeds" and method == "lpt":
        return  # LPT's generate passes inputs_embeds on to the model, which takes them
    kwargs.update(pad_token_id=0, eos_token_id=None, do_sample=False)
    out = _raises_naming(lambda: tuned.generate(**kwargs), (argument,), tuned)
    if method == "dept":
        assert tuned.base_model.get_input_embeddings() is tuned.prompt_module.embedding
    if out is not None:
        assert out.shape[0] == 1 and out.dtype == torch.long


# ----------------------------------------------------------------------------------------------------------------
# save and load of adapters with corrupted config fields, files and tensors
# ----------------------------------------------------------------------------------------------------------------

SAVED = ["dept", "lamp", "lpt", "prompt_tuning"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, models) -> dict[str, Path]:
    """One saved adapter folder per method, from the module's GPT-2 (attach undone after saving)."""
    root = tmp_path_factory.mktemp("adapters")
    folders = {}
    for method in SAVED:
        with _undone(models["gpt2"]) as made:
            tuned = attach(models["gpt2"], CONFIGS[method])
            made.append(tuned)
            folders[method] = tuned.save_adapter(root / method)
    return folders


def _corrupt_tensors(folder: Path, how: str, draw) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / WEIGHTS_FILE
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: draw(st.integers(0, 64))])
        return
    if how == "delete":
        path.unlink()
        return
    tensors = load_file(str(path))
    name = draw(st.sampled_from(sorted(tensors)))
    if how == "drop":
        del tensors[name]
    elif how == "extra":
        tensors["extra"] = torch.zeros(2)
    elif how == "reshape":
        tensors[name] = tensors[name].reshape(-1)[:-1].clone() if tensors[name].numel() > 1 else torch.zeros(2)
    elif how == "dtype":
        tensors[name] = tensors[name].to(draw(st.sampled_from([torch.float16, torch.float64, torch.int32])))
    elif how == "nan":
        tensors[name] = torch.full_like(tensors[name], math.nan)
    save_file(tensors, str(path))


@st.composite
def adapter_corruptions(draw):
    method = draw(st.sampled_from(SAVED))
    kind = draw(st.sampled_from(["field", "top", "tensors", "config file"]))
    return method, kind, draw(st.data())


@SETTINGS
@given(case=adapter_corruptions())
def test_load_adapter(models, saved, case):
    method, kind, data = case
    model = models["gpt2"]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "adapter"
        shutil.copytree(saved[method], folder)
        meta = json.loads((folder / CONFIG_FILE).read_text())
        names = (CONFIG_FILE, WEIGHTS_FILE)
        if kind == "field":
            field = data.draw(st.sampled_from(sorted(set(meta["config"]) - {"method"})))
            meta["config"][field] = data.draw(st.sampled_from([v for v in _pool(field) if _jsonable(v)]))
        elif kind == "top":
            key = data.draw(st.sampled_from(["format", "format_version", "config", "hidden_size", "vocab_size"]))
            meta[key] = data.draw(st.sampled_from([None, "x", 2, 16, [], {"method": "dept"}, {}]))
        elif kind == "tensors":
            how = data.draw(st.sampled_from(["truncate", "delete", "drop", "extra", "reshape", "dtype", "nan"]))
            _corrupt_tensors(folder, how, data.draw)
        else:
            text = data.draw(st.sampled_from(["", "{broken", "[]", "null", '{"format": 1}', "NaN"]))
            (folder / CONFIG_FILE).write_text(text)
        if kind != "config file":
            (folder / CONFIG_FILE).write_text(json.dumps(meta))
        with _undone(model) as made:
            tuned = _raises_naming(lambda: load_adapter(model, folder), names, model)
            if tuned is not None:
                made.append(tuned)
                _check_loaded(tuned, meta)


def _jsonable(value) -> bool:
    try:
        json.dumps(value, allow_nan=True)
    except TypeError:
        return False
    return True


def _check_loaded(tuned, meta: dict) -> None:
    """A successful load holds the file's config (LPT: with the layer resolved)."""
    expected = {k: v for k, v in meta["config"].items() if k != "method"}
    got = tuned.config.to_dict()
    for key, value in expected.items():
        if value is not None:
            assert got[key] == value or (isinstance(value, list) and got[key] == list(value)), key
    ids = torch.randint(0, VOCAB, (1, 3))
    with torch.no_grad():
        assert tuned(input_ids=ids).logits.shape[:2] == (1, 3 + getattr(tuned, "num_prompt_rows", 0))
