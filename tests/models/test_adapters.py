"""Adapters: bitwise round trip, only the method's tensors on disk, clear errors that leave the model untouched."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from prompt_ops.models import DePTConfig, EPTConfig, LAMPConfig, PromptTuningConfig, attach, load_adapter, save_adapter
from prompt_ops.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from tests.models.model_state import ModelState
from tests.models.test_attach import CONFIGS, VOCAB, move_off_init, tiny

pytest.importorskip("safetensors")
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dept_sst2"


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_round_trip_is_bitwise_exact(method, tmp_path):
    tuned = attach(tiny("gpt2"), CONFIGS[method])
    move_off_init(tuned)
    tuned.save_adapter(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    assert (tmp_path / WEIGHTS_FILE).stat().st_size < 20_000  # the method's tensors only, not the model
    reloaded = load_adapter(tiny("gpt2"), tmp_path)
    assert type(reloaded.config) is type(tuned.config) and reloaded.config == tuned.config
    for name, param in tuned.adapter_state_dict().items():
        assert torch.equal(reloaded.adapter_state_dict()[name], param)
    ids = torch.randint(1, VOCAB, (2, 6))
    tuned.eval(), reloaded.eval()
    assert torch.equal(tuned(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_round_trip_with_a_text_initialised_prompt(tmp_path):
    tuned = attach(tiny("gpt2"), DePTConfig(num_tokens=4, rank=3, max_length=12, init_token_ids=[5, 6, 7]))
    tuned.save_adapter(tmp_path)
    reloaded = load_adapter(tiny("gpt2"), tmp_path)
    assert reloaded.config.init_token_ids == [5, 6, 7]
    assert torch.equal(reloaded.prompt_module.prompt, tuned.prompt_module.prompt)


def _saved(tmp_path: Path, config=None) -> Path:
    tuned = attach(tiny("gpt2"), config or DePTConfig(num_tokens=4, rank=3, max_length=12))
    tuned.save_adapter(tmp_path / "adapter")
    return tmp_path / "adapter"


def _expect_refusal(folder: Path, pattern: str):
    model = tiny("gpt2")
    with pytest.raises(ValueError, match=pattern):
        load_adapter(model, folder)
    assert all(p.requires_grad for p in model.parameters())  # untouched: not frozen, nothing attached


def test_refuses_missing_and_extra_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _saved(tmp_path)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    save_file({k: v for k, v in tensors.items() if k != "lora_b"}, str(folder / WEIGHTS_FILE))
    _expect_refusal(folder, r"adapter.safetensors: expected tensors .*missing \['lora_b'\]")
    save_file({**tensors, "extra": torch.zeros(2)}, str(folder / WEIGHTS_FILE))
    _expect_refusal(folder, r"unexpected \['extra'\]")


def test_refuses_wrong_shapes_and_dtypes(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _saved(tmp_path)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    save_file({**tensors, "lora_a": torch.zeros(11, 3)}, str(folder / WEIGHTS_FILE))
    _expect_refusal(folder, r"lora_a has shape \(11, 3\), the config implies \(12, 3\)")
    save_file({**tensors, "prompt": tensors["prompt"].half()}, str(folder / WEIGHTS_FILE))
    _expect_refusal(folder, r"prompt has dtype torch.float16, expected torch.float32")


def test_refuses_a_config_for_another_method(tmp_path):
    folder = _saved(tmp_path)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    meta["config"] = LAMPConfig(num_tokens=6, rank=2).to_dict()
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    _expect_refusal(folder, r"expected tensors \['q', 'u', 'v'\]")
    meta["config"] = {"method": "lora"}
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    _expect_refusal(folder, r"adapter_config.json: unknown method 'lora'")
    meta["config"] = {"method": "dept", "heads": 3}
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    _expect_refusal(folder, r"fields \['heads'\] are not DePTConfig fields")


def test_refuses_truncated_and_corrupted_files(tmp_path):
    folder = _saved(tmp_path, EPTConfig(num_tokens=4, rank=3, max_length=12, num_subspaces=2, subspace_rank=2))
    blob = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(blob[: len(blob) // 2])
    _expect_refusal(folder, r"adapter.safetensors: cannot be read as safetensors")
    (folder / WEIGHTS_FILE).unlink()
    _expect_refusal(folder, r"adapter.safetensors: not found")
    (folder / CONFIG_FILE).write_text("{broken")
    _expect_refusal(folder, r"adapter_config.json: not a readable JSON adapter config")
    (folder / CONFIG_FILE).write_text(json.dumps({"format": "peft"}))
    _expect_refusal(folder, r"not a prompt_ops adapter")
    _expect_refusal(tmp_path / "nowhere", r"adapter_config.json: not found")


def test_refuses_a_model_of_another_width(tmp_path):
    folder = _saved(tmp_path)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    meta["hidden_size"] = 32
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    _expect_refusal(folder, r"saved from a model with hidden size 32, but the model's input embedding has 16")


@pytest.mark.parametrize("key, value", [("vocab_size", 2 * VOCAB), ("vocab_size", "64"), ("hidden_size", "16")])
def test_refuses_a_model_of_another_vocabulary_or_a_size_of_another_type(tmp_path, key, value):
    folder = _saved(tmp_path)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    meta[key] = value
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    _expect_refusal(folder, rf"adapter_config.json: the adapter was saved from a model with .* {value!r}, but")


def test_refuses_non_finite_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _saved(tmp_path)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    save_file({**tensors, "lora_b": torch.full_like(tensors["lora_b"], float("inf"))}, str(folder / WEIGHTS_FILE))
    _expect_refusal(folder, r"adapter.safetensors: lora_b holds NaN or infinity")


def test_save_into_a_folder_that_cannot_be_created_names_it(tmp_path):
    tuned = attach(tiny("gpt2"), DePTConfig(num_tokens=2, rank=2, max_length=8))
    (tmp_path / "a_file").write_text("kept")
    with pytest.raises(ValueError, match=r"directory .*a_file/sub cannot be created"):
        tuned.save_adapter(tmp_path / "a_file" / "sub")
    assert (tmp_path / "a_file").read_text() == "kept"


def test_save_into_a_folder_without_write_permission_names_it(tmp_path, monkeypatch):
    """A read-only folder (simulated: the tests may run as root, who writes anywhere) is the argument's fault."""
    import tempfile

    tuned = attach(tiny("gpt2"), DePTConfig(num_tokens=2, rank=2, max_length=8))

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(ValueError, match=r"directory .* cannot be written .*Permission denied"):
        tuned.save_adapter(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_official_dept_adapter_loads_through_the_same_entry(tmp_path):
    """The authors' SST-2 adapter onto a tiny T5 of T5-Base's width and vocabulary (random weights)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(
        vocab_size=32128, d_model=768, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    folder = tmp_path / "official"
    shutil.copytree(FIXTURE, folder)
    tuned = load_adapter(model, folder)
    assert tuned.config == DePTConfig(num_tokens=60, rank=30, max_length=256, lora_alpha=8.0)
    state = torch.load(FIXTURE / "adapter_model.bin", map_location="cpu", weights_only=True)
    assert torch.equal(tuned.prompt_module.lora_b, state["prompt_encoder.lora_embedding_B"])
    ids = torch.randint(1, 32128, (1, 9))
    out = tuned(input_ids=ids, labels=torch.randint(1, 32128, (1, 3)))
    assert out.logits.shape == (1, 3, 32128)


# ------------------------------------------------------------------------------------------------------------------
# Regressions of the bad-input campaign: errors name the file and the field, the model stays as it was, and a save
# never loses what was saved before
# ------------------------------------------------------------------------------------------------------------------


def _gpt2(vocab: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=64)
    return transformers.GPT2LMHeadModel(config)


def test_init_token_ids_outside_the_new_vocabulary_name_the_file(tmp_path):
    folder = _saved(tmp_path, DePTConfig(num_tokens=2, rank=2, max_length=12, init_token_ids=[60]))
    meta = json.loads((folder / CONFIG_FILE).read_text())
    del meta["vocab_size"]  # a file that does not record the vocabulary (otherwise refused by it first)
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    model = _gpt2(vocab=32)  # same width, smaller vocabulary
    before = ModelState.of(model)
    with pytest.raises(ValueError, match=r"adapter_config.json: bad field in 'config': init_token_ids must be in"):
        load_adapter(model, folder)
    before.assert_unchanged(model)


@pytest.mark.parametrize(
    "field, value, pattern",
    [
        ("rank", "3", "rank must be an int, got str"),
        ("rank", 2.5, "rank must be an int, got float"),
        ("num_tokens", 2**40, r"prompt \(num_tokens=1099511627776"),
        ("lora_alpha", None, "lora_alpha must be a positive number, got NoneType"),
        ("init_token_ids", [1.5], "init_token_ids must be .* float"),
        ("init_token_ids", "abc", "init_token_ids must be .* got str"),
    ],
)
def test_a_wrong_config_field_names_the_file_and_the_field(tmp_path, field, value, pattern):
    folder = _saved(tmp_path)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    meta["config"][field] = value
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    model = tiny("gpt2")
    before = ModelState.of(model)
    with pytest.raises(ValueError, match=r"adapter_config.json: bad field in 'config': " + pattern):
        load_adapter(model, folder)
    before.assert_unchanged(model)


def test_official_integer_fields_must_be_integers(tmp_path):
    folder = tmp_path / "official"
    shutil.copytree(FIXTURE, folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "r": 2.5}))
    model = tiny("t5")
    before = ModelState.of(model)
    with pytest.raises(ValueError, match=r"adapter_config.json: field 'r' must be a positive integer, got 2.5"):
        load_adapter(model, folder)
    before.assert_unchanged(model)


def test_save_and_load_name_their_arguments(tmp_path):
    with pytest.raises(TypeError, match="tuned must be a model returned by prompt_ops.models.attach .*GPT2LMHeadModel"):
        save_adapter(tiny("gpt2"), tmp_path)
    tuned = attach(tiny("gpt2"), PromptTuningConfig(num_tokens=2))
    with pytest.raises(TypeError, match="directory must be a str or os.PathLike folder, got NoneType"):
        tuned.save_adapter(None)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="directory must be a folder, but .*file is a file"):
        tuned.save_adapter(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"
    model = tiny("gpt2")
    with pytest.raises(TypeError, match="directory must be a str or os.PathLike folder, got NoneType"):
        load_adapter(model, None)
    with pytest.raises(TypeError, match="model must be a Hugging Face PreTrainedModel .*got dict"):
        load_adapter({}, tmp_path)
    with pytest.raises(ValueError, match="backend must be one of"):
        load_adapter(model, tmp_path, backend="gpu")
    assert all(p.requires_grad for p in model.parameters())


def test_a_failed_save_keeps_the_earlier_adapter(tmp_path, monkeypatch):
    import safetensors.torch

    first = attach(tiny("gpt2"), DePTConfig(num_tokens=2, rank=2, max_length=12))
    first.save_adapter(tmp_path)
    saved = {name: (tmp_path / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}
    second = attach(tiny("gpt2"), LAMPConfig(num_tokens=4, rank=2))

    def disk_full(tensors, path):
        Path(path).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        second.save_adapter(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(saved)  # no temporary files left behind
    assert {name: (tmp_path / name).read_bytes() for name in saved} == saved


def test_a_saved_config_is_a_snapshot(tmp_path):
    """Edits of the user's config object after attach do not reach the adapter; tensor ids are saved as ints."""
    config = DePTConfig(num_tokens=2, rank=2, max_length=12, init_token_ids=torch.tensor([5, 6]))
    tuned = attach(tiny("gpt2"), config)
    config.rank = 9
    tuned.save_adapter(tmp_path)
    reloaded = load_adapter(tiny("gpt2"), tmp_path)
    assert reloaded.config == DePTConfig(num_tokens=2, rank=2, max_length=12, init_token_ids=[5, 6])


def test_positions_override_on_load(tmp_path):
    """``load_adapter(..., positions=)`` replaces the saved convention: the reloaded model equals one attached with
    that convention and the same tensors (left padding, where the two conventions differ)."""
    tuned = attach(tiny("gpt2"), DePTConfig(num_tokens=4, rank=3, max_length=12))
    move_off_init(tuned)
    tuned.save_adapter(tmp_path)
    absolute = attach(tiny("gpt2"), DePTConfig(num_tokens=4, rank=3, max_length=12, positions="absolute"))
    absolute.prompt_module.load_state_dict(tuned.prompt_module.state_dict())
    reloaded = load_adapter(tiny("gpt2"), tmp_path, positions="absolute")
    assert reloaded.config.positions == "absolute" and load_adapter(tiny("gpt2"), tmp_path).config.positions == "tokens"
    ids = torch.randint(1, VOCAB, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    absolute.eval(), reloaded.eval(), tuned.eval()
    got = reloaded(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got, absolute(input_ids=ids, attention_mask=mask).logits)
    assert not torch.allclose(got[0], tuned(input_ids=ids, attention_mask=mask).logits[0])  # the override matters


@pytest.mark.parametrize("positions", ["Tokens", 1])
def test_bad_positions_override_is_refused_before_the_model_is_touched(tmp_path, positions):
    folder = _saved(tmp_path)
    model = tiny("gpt2")
    with pytest.raises(ValueError, match="positions"):
        load_adapter(model, folder, positions=positions)
    assert all(p.requires_grad for p in model.parameters())
