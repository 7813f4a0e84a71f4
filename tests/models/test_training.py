"""Training the attached model with transformers.Trainer, unchanged (DDP, FSDP2, Accelerate: test_distributed.py)."""

import numpy as np
import pytest
import torch

from prompt_ops.models import DePTConfig, attach
from prompt_ops.models.callbacks import EfficiencyCallback
from tests.models.test_attach import VOCAB, tiny

transformers = pytest.importorskip("transformers")


def test_trainer_trains_only_the_adapter(tmp_path):
    torch.manual_seed(0)
    tuned = attach(tiny("gpt2"), DePTConfig(num_tokens=4, rank=3, max_length=16))
    base_before = {k: v.clone() for k, v in tuned.base_model.state_dict().items()}
    adapter_before = {k: v.clone() for k, v in tuned.adapter_state_dict().items()}
    ids = torch.randint(1, VOCAB, (8, 10))
    data = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in ids]

    def loss():
        with torch.no_grad():
            return tuned(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.item()

    tuned.eval()
    before = loss()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=15, per_device_train_batch_size=8, learning_rate=0.05,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    efficiency = EfficiencyCallback(tokens_per_step=8 * 10, warmup_steps=3)
    transformers.Trainer(model=tuned, args=args, train_dataset=data, callbacks=[efficiency]).train()
    tuned.eval()
    assert loss() < before
    report = efficiency.summary()
    assert report["steps"] == 12 and report["step_p20_ms"] <= report["step_ms"] <= report["step_p80_ms"]
    assert report["tokens_per_s"] == pytest.approx(80 / (report["step_ms"] / 1e3))
    assert report["peak_allocated_mb"] is None  # no GPU here
    with pytest.raises(ValueError, match="tokens_per_step must be an int >= 1"):
        EfficiencyCallback(tokens_per_step=0)
    with pytest.raises(TypeError, match="warmup_steps must be an int >= 0, got float"):
        EfficiencyCallback(tokens_per_step=8, warmup_steps=1.5)
    assert EfficiencyCallback(tokens_per_step=np.int64(8)).tokens_per_step == 8  # NumPy integers are ints
    for name, value in tuned.base_model.state_dict().items():
        assert torch.equal(value, base_before[name]), name
    assert all(not torch.equal(v, adapter_before[k]) for k, v in tuned.adapter_state_dict().items())
