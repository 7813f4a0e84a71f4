"""Adapters: bitwise round trip, only the method's tensors on disk, clear errors that leave the model untouched."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from prompt_ops.models import DePTConfig, EPTConfig, LAMPConfig, attach, load_adapter
from prompt_ops.models.adapters import CONFIG_FILE, WEIGHTS_FILE
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
    _expect_refusal(folder, r"trained for hidden size 32, the model's input embedding has 16")


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
