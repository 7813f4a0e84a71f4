"""Parameter groups (``parameter_groups``) and the Trainer helper (``trainer_optimizers``): the groups partition the
trainable parameters exactly for every method and model family, each group's rate reaches its update, the defaults
are the official scripts' recipes (reference/methods.md), the Trainer trains the adapter alone with both rates, and
bad rates are refused by name."""

import json
import math

import numpy as np
import pytest
import torch

from prompt_ops.models import LPTConfig, attach, trainer_optimizers
from tests.models import test_lpt
from tests.models.model_state import ModelState
from tests.models.test_attach import CONFIGS, VOCAB, tiny

transformers = pytest.importorskip("transformers")

METHODS = {**CONFIGS, "lpt": LPTConfig(num_tokens=2, hidden_size=4, layer=2)}
EXPECTED = {
    "prompt_tuning": {"prompt": ["prompt"]},
    "dept": {"prompt": ["prompt"], "offset": ["lora_a", "lora_b"]},
    "adept": {"prompt": ["prompt"], "offset": ["w_down", "w_up"], "offset_bias": ["b_down", "b_up"]},
    "lamp": {"prompt": ["u", "q", "v"]},
    "ept": {
        "prompt": ["prompt"], "offset": ["lora_a", "lora_b", "w_down", "w_up", "w_gate"], "offset_bias": ["b_gate"],
    },
    "lpt": {"generator": ["w_down", "w_up"], "generator_bias": ["b_down", "b_up"]},
}  # fmt: skip
"""Each method's groups, by the module's parameter names (the split each module's docstring argues)."""
SECOND_RATE = {"offset", "offset_bias"}
NO_DECAY = {"offset_bias", "generator_bias"}
RECIPES = {  # (lr, offset_lr, weight_decay) from the official scripts (reference/methods.md §1.4, §2.3, §5.3)
    "prompt_tuning": (0.3, None, 0.0),
    "dept": (0.3, 5e-4, 0.0),
    "adept": (0.3, 1e-4, 0.0),
    "lamp": (0.3, None, 0.0),
    "ept": (0.3, 5e-4, 0.0),
    "lpt": (1e-3, None, 0.1),
}


def tuned_model(method: str, family: str):
    """``method`` attached to a tiny ``family`` model in eval mode (LPT on a 4-layer one: it needs layers to skip)."""
    model = test_lpt.tiny(family, head=True) if method == "lpt" else tiny(family)
    return attach(model, METHODS[method])


def names_by_id(module: torch.nn.Module) -> dict[int, str]:
    return {id(param): name for name, param in module.named_parameters()}


def grouped_names(module: torch.nn.Module, groups: list[dict]) -> dict[str, list[str]]:
    names = names_by_id(module)
    return {group["name"]: [names[id(param)] for param in group["params"]] for group in groups}


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
@pytest.mark.parametrize("method", list(METHODS))
def test_groups_partition_the_trainable_parameters(method, family):
    tuned = tuned_model(method, family)
    groups = tuned.parameter_groups()
    params = [param for group in groups for param in group["params"]]
    assert len({id(param) for param in params}) == len(params), "a parameter is in two groups"
    trainable = {id(param) for param in tuned.parameters() if param.requires_grad}
    assert {id(param) for param in params} == trainable
    assert all(param.requires_grad for param in params)
    expected = {name: [f"prompt_module.{p}" for p in ps] for name, ps in EXPECTED[method].items()}
    assert grouped_names(tuned, groups) == expected
    # the method's module alone splits the same way
    module = tuned.prompt_module
    assert grouped_names(module, module.parameter_groups()) == EXPECTED[method]


@pytest.mark.parametrize("method", list(METHODS))
def test_defaults_are_the_recipe(method):
    tuned = tuned_model(method, "gpt2")
    lr, offset_lr, weight_decay = RECIPES[method]
    assert (tuned.config.recipe.lr, tuned.config.recipe.offset_lr) == (lr, offset_lr)
    assert tuned.config.recipe.weight_decay == weight_decay
    for group in tuned.parameter_groups():
        assert group["lr"] == (offset_lr if group["name"] in SECOND_RATE else lr), group["name"]
        assert group["weight_decay"] == (0.0 if group["name"] in NO_DECAY else weight_decay), group["name"]


def test_frozen_tensors_are_left_out_and_stray_trainable_ones_refused():
    tuned = tuned_model("dept", "gpt2")
    tuned.prompt_module.lora_a.requires_grad_(False)
    assert grouped_names(tuned, tuned.parameter_groups()) == {
        "prompt": ["prompt_module.prompt"], "offset": ["prompt_module.lora_b"]
    }  # fmt: skip
    tuned.prompt_module.lora_b.requires_grad_(False)
    assert grouped_names(tuned, tuned.parameter_groups()) == {"prompt": ["prompt_module.prompt"]}
    tuned.base_model.transformer.ln_f.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"trainable parameters outside the adapter \(base_model.transformer.ln_f"):
        tuned.parameter_groups()


def _perturbed(tuned) -> None:
    """Every adapter tensor nonzero, so that every one gets a gradient (DePT's ``lora_b`` starts at zero)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for param in tuned.adapter_state_dict().values():
            param.add_(torch.randn_like(param) * 0.1)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_group_steps_at_its_rate(method):
    """SGD steps a parameter by ``-lr * (grad + weight_decay * param)``: each tensor moves by its own group's rate,
    and the biases without weight decay."""
    tuned = tuned_model(method, "gpt2")
    _perturbed(tuned)
    lr, offset_lr, weight_decay = 0.1, 1e-3, 0.5
    optimizer = torch.optim.SGD(tuned.parameter_groups(lr=lr, offset_lr=offset_lr, weight_decay=weight_decay))
    ids = torch.randint(1, VOCAB, (3, 7), generator=torch.Generator().manual_seed(0))
    labels = ids.masked_fill(torch.arange(7) < 3, -100)  # a source for LPT's generator on a causal LM
    tuned(input_ids=ids, labels=labels).loss.backward()
    before = {name: param.detach().clone() for name, param in tuned.adapter_state_dict().items()}
    optimizer.step()
    for group, names in EXPECTED[method].items():
        rate = offset_lr if group in SECOND_RATE else lr
        decay = 0.0 if group in NO_DECAY else weight_decay
        for name in names:
            param = tuned.adapter_state_dict()[name]
            assert param.grad.abs().max() > 0, name
            expected = before[name] - rate * (param.grad + decay * before[name])
            torch.testing.assert_close(param.detach(), expected, msg=f"{method}.{name} ({group})")


def test_trainer_trains_the_adapter_alone_with_both_rates(tmp_path):
    torch.manual_seed(0)
    tuned = attach(tiny("gpt2"), METHODS["dept"])
    base = ModelState.of(tuned.base_model)
    adapter_before = {name: value.clone() for name, value in tuned.adapter_state_dict().items()}
    ids = torch.randint(1, VOCAB, (8, 10))
    data = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in ids]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, warmup_steps=2, per_device_train_batch_size=8, learning_rate=0.05,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    rates = []

    class Rates(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            rates.append({group["name"]: group["lr"] for group in optimizer.param_groups})

    trainer = transformers.Trainer(
        model=tuned, args=args, train_dataset=data, optimizers=trainer_optimizers(tuned, args, offset_lr=2e-3),
        callbacks=[Rates()],
    )  # fmt: skip
    trainer.train()
    # args' linear schedule with warmup scales both groups alike: the ratio of the two rates stays 0.05 / 2e-3
    assert len(rates) == 6 and max(step["prompt"] for step in rates) == pytest.approx(0.05)
    for step in rates[:-1]:  # the last step's rates are 0
        assert step["prompt"] / step["offset"] == pytest.approx(0.05 / 2e-3)
    base.assert_unchanged(tuned.base_model, "Trainer")
    for name, value in tuned.adapter_state_dict().items():
        assert not torch.equal(value, adapter_before[name]), name


BAD_RATES = [(-1e-3, ValueError), (math.nan, ValueError), (math.inf, ValueError), (10**400, ValueError),
             (True, TypeError), ("0.1", TypeError), (torch.tensor(0.1), TypeError)]  # fmt: skip
"""``10**400`` is a real number past every float: refused by name, not an ``OverflowError`` from ``math``."""


@pytest.mark.parametrize("argument", ["lr", "offset_lr", "weight_decay"])
@pytest.mark.parametrize(
    ("value", "error"), BAD_RATES, ids=["negative", "nan", "inf", "past_float", "bool", "str", "tensor"]
)
def test_bad_rates_are_refused_by_name(argument, value, error):
    tuned = tuned_model("dept", "gpt2")
    with pytest.raises(error, match=f"^{argument} must be"):
        tuned.parameter_groups(**{argument: value})
    with pytest.raises(error, match=f"^{argument} must be"):
        tuned.prompt_module.parameter_groups(**{argument: value})


def test_numpy_rates_are_taken_as_floats():
    """A numpy scalar (what a sweep over ``np.logspace`` yields) is a real number: taken, stored as a float."""
    groups = tuned_model("dept", "gpt2").parameter_groups(lr=np.float32(0.5), offset_lr=np.int64(0))
    assert [(group["name"], group["lr"]) for group in groups] == [("prompt", 0.5), ("offset", 0.0)]
    assert all(type(group["lr"]) is float for group in groups)


def test_trainer_helper_refuses_bad_arguments(tmp_path):
    tuned = tuned_model("dept", "gpt2")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(TypeError, match="^tuned must be a model returned by prompt_ops.models.attach"):
        trainer_optimizers(tuned.base_model, args)
    with pytest.raises(TypeError, match="^args must be a transformers.TrainingArguments, got dict"):
        trainer_optimizers(tuned, {"learning_rate": 0.3})
    with pytest.raises(ValueError, match="^offset_lr must be a finite number >= 0"):
        trainer_optimizers(tuned, args, offset_lr=-1.0)
    args.learning_rate = math.nan
    with pytest.raises(ValueError, match=r"^args\.learning_rate must be a finite number >= 0, got nan"):
        trainer_optimizers(tuned, args)


def test_the_adapter_keeps_nothing_of_the_optimizer(tmp_path):
    tuned = tuned_model("dept", "gpt2")
    folder = tuned.save_adapter(tmp_path / "adapter")
    saved = json.loads((folder / "adapter_config.json").read_text())["config"]
    assert set(saved) == {"method", "num_tokens", "rank", "max_length", "lora_alpha", "init_token_ids", "positions"}
