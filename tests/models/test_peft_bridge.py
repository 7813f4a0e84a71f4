"""The PEFT bridge: parity with unmodified PEFT prompt tuning at DePT's init, offsets that train, saved extras."""

import pytest
import torch

from prompt_ops.models import ADePTConfig, DePTConfig, bridge_peft, load_bridge, save_bridge
from prompt_ops.ops import reference
from tests.models.test_attach import VOCAB, tiny

peft = pytest.importorskip("peft")


def peft_prompt_tuning(family: str = "gpt2"):
    task = "SEQ_2_SEQ_LM" if family == "t5" else "CAUSAL_LM"
    config = peft.PromptTuningConfig(task_type=task, num_virtual_tokens=4, num_transformer_submodules=1)
    return peft.get_peft_model(tiny(family), config).eval()


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_parity_with_unmodified_peft_at_init(family):
    plain = peft_prompt_tuning(family)
    bridged = bridge_peft(peft_prompt_tuning(family), DePTConfig(num_tokens=4, rank=3, max_length=16))
    bridged.prompt_encoder.default.embedding.weight.data.copy_(plain.prompt_encoder.default.embedding.weight)
    ids = torch.randint(1, VOCAB, (2, 7))
    kwargs = {"labels": torch.randint(1, VOCAB, (2, 3))} if family == "t5" else {"labels": ids}
    expected, got = plain(input_ids=ids, **kwargs), bridged(input_ids=ids, **kwargs)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)  # lora_b = 0: zero offset


def test_bridged_offset_is_dept_and_trains():
    bridged = bridge_peft(peft_prompt_tuning(), DePTConfig(num_tokens=4, rank=3, max_length=16))
    method = bridged.word_embeddings.method
    with torch.no_grad():
        method.lora_b.normal_()
    ids = torch.randint(1, VOCAB, (2, 7))
    embeds = bridged.word_embeddings(ids)
    no_prompt = torch.zeros(0, embeds.shape[-1])
    expected, _ = reference.dept_embed(
        ids, method.embedding.weight, no_prompt, method.lora_a, method.lora_b, method.scale
    )
    torch.testing.assert_close(embeds, expected, rtol=1e-5, atol=1e-5)
    bridged(input_ids=ids, labels=ids).loss.backward()
    assert method.lora_a.grad is not None and method.lora_b.grad is not None
    assert bridged.prompt_encoder.default.embedding.weight.grad is not None  # PEFT's prompt trains too
    assert method.prompt.grad is None  # the method's own prompt is not used


def test_extra_tensors_save_and_load(tmp_path):
    bridged = bridge_peft(peft_prompt_tuning(), ADePTConfig(num_tokens=4, rank=3))
    with torch.no_grad():
        for param in bridged.word_embeddings.offset_parameters().values():
            param.normal_()
    save_bridge(bridged, tmp_path)
    other = bridge_peft(peft_prompt_tuning(), ADePTConfig(num_tokens=4, rank=3))
    load_bridge(other, tmp_path)
    for name, param in bridged.word_embeddings.offset_parameters().items():
        assert torch.equal(other.word_embeddings.offset_parameters()[name], param)
    wrong = bridge_peft(peft_prompt_tuning(), ADePTConfig(num_tokens=4, rank=5))
    with pytest.raises(ValueError, match=r"prompt_ops_bridge.safetensors: w_down is \(16, 3\)"):
        load_bridge(wrong, tmp_path)


def test_bad_bridge_arguments(tmp_path):
    from prompt_ops.models import LAMPConfig

    with pytest.raises(TypeError, match="DePTConfig or ADePTConfig"):
        bridge_peft(peft_prompt_tuning(), LAMPConfig())
    with pytest.raises(TypeError, match="PEFT prompt-tuning PeftModel"):
        bridge_peft(tiny("gpt2"), DePTConfig())
    bridged = bridge_peft(peft_prompt_tuning(), DePTConfig(num_tokens=4, rank=3, max_length=16))
    with pytest.raises(ValueError, match="already bridged"):
        bridge_peft(bridged, DePTConfig())
    with pytest.raises(ValueError, match="not bridged"):
        save_bridge(peft_prompt_tuning(), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # a refused save writes nothing
