"""Parameter groups (``parameter_groups``) and the Trainer helper (``trainer_optimizers``): the groups partition the
trainable parameters exactly for every method and model family, each group's rate reaches its update, the defaults
are the official scripts' recipes (reference/methods.md), the Trainer trains the adapter alone with both rates, and
bad rates are refused by name."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from prompt_ops.methods.ept import EPT
from prompt_ops.models import LPTConfig, attach, attach_many, trainer_optimizers
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
    args.learning_rate = 0.3
    for name, value, pattern in (("adam_beta1", 1.0, r"in \[0, 1\), got 1\.0"), ("adam_beta2", -0.5, ">= 0"),
                                 ("adam_epsilon", math.inf, ">= 0")):  # fmt: skip
        setattr(args, name, value)
        with pytest.raises(ValueError, match=rf"^args\.{name} must be (a finite number )?{pattern}"):
            trainer_optimizers(tuned, args)
        setattr(args, name, getattr(transformers.TrainingArguments, name))


def test_the_adapter_keeps_nothing_of_the_optimizer(tmp_path):
    tuned = tuned_model("dept", "gpt2")
    folder = tuned.save_adapter(tmp_path / "adapter")
    saved = json.loads((folder / "adapter_config.json").read_text())["config"]
    assert set(saved) == {"method", "num_tokens", "rank", "max_length", "lora_alpha", "init_token_ids", "positions"}


MIXED_SETTINGS = {  # each stacked table of a model holding every method: (group, lr, weight decay), by the recipes
    "bank.prompts": ("prompt", 0.3, 0.0),
    "bank.lora_a": ("offset", 5e-4, 0.0), "bank.lora_b": ("offset", 5e-4, 0.0),  # DePT's and EPT's pair
    "bank.adept_w_down": ("offset", 1e-4, 0.0), "bank.adept_w_up": ("offset", 1e-4, 0.0),
    "bank.adept_b_down": ("offset_bias", 1e-4, 0.0), "bank.adept_b_up": ("offset_bias", 1e-4, 0.0),
    "bank.lamp_u": ("prompt", 0.3, 0.0), "bank.lamp_q": ("prompt", 0.3, 0.0), "bank.lamp_v": ("prompt", 0.3, 0.0),
    "bank.ept_w_down": ("offset", 5e-4, 0.0), "bank.ept_w_up": ("offset", 5e-4, 0.0),
    "bank.ept_w_gate": ("offset", 5e-4, 0.0), "bank.ept_b_gate": ("offset_bias", 5e-4, 0.0),
    "late.w_down": ("generator", 1e-3, 0.1), "late.w_up": ("generator", 1e-3, 0.1),
    "late.b_down": ("generator_bias", 1e-3, 0.0), "late.b_up": ("generator_bias", 1e-3, 0.0),
}  # fmt: skip


def mixed_model():
    """Every method in one mixed-adapter model over a tiny 4-layer GPT-2 (LPT inserts at layer 2)."""
    return attach_many(test_lpt.tiny("gpt2", head=True), {f"{method}_adapter": config for method, config in
                                                          METHODS.items()})  # fmt: skip


def test_a_mixed_model_gives_each_stacked_table_its_methods_recipe():
    """The groups partition the trainable tables exactly; each table gets its method's rate and weight decay (the
    prompts 3e-1, DePT's and EPT's pair 5e-4, ADePT's FFN 1e-4, LPT's generator 1e-3 with decay 0.1, biases
    undecayed); given rates override every method's; an SGD step moves each table by its own group's rate."""
    multi = mixed_model()
    trainable = {name for name, param in multi.named_parameters() if param.requires_grad}
    assert trainable == set(MIXED_SETTINGS)
    for overrides in ({}, {"lr": 0.05, "offset_lr": 0.002, "weight_decay": 0.5}):
        groups = multi.parameter_groups(**overrides)
        names = grouped_names(multi, groups)
        listed = [name for group in names.values() for name in group]
        assert sorted(listed) == sorted(trainable)  # each once
        for group in groups:
            for name in names[group["name"]]:
                kind, lr, decay = MIXED_SETTINGS[name]
                if overrides:
                    lr = overrides["offset_lr" if kind in SECOND_RATE else "lr"]
                    decay = 0.0 if kind in NO_DECAY else overrides["weight_decay"]
                assert group["name"].startswith(f"{kind} (") and (group["lr"], group["weight_decay"]) == (lr, decay)
    assert [group["name"] for group in multi.parameter_groups()] == [
        "prompt (prompt_tuning, dept, adept, lamp, ept)", "offset (dept, ept)", "offset (adept)",
        "offset_bias (adept)", "offset_bias (ept)", "generator (lpt)", "generator_bias (lpt)",
    ]  # fmt: skip


def test_a_mixed_model_steps_each_table_at_its_rate():
    multi = mixed_model().train()
    torch.manual_seed(3)
    with torch.no_grad():
        for param in multi.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    optimizer = torch.optim.SGD(multi.parameter_groups(lr=0.1, offset_lr=1e-3, weight_decay=0.5))
    ids = torch.randint(1, VOCAB, (6, 7), generator=torch.Generator().manual_seed(0))
    labels = ids.masked_fill(torch.arange(7) < 3, -100)
    multi(input_ids=ids, labels=labels, adapter_names=multi.adapter_names).loss.backward()
    tables = dict(multi.named_parameters())
    before = {name: tables[name].detach().clone() for name in MIXED_SETTINGS}
    optimizer.step()
    for name, (kind, _, _) in MIXED_SETTINGS.items():
        rate, decay = (1e-3 if kind in SECOND_RATE else 0.1), (0.0 if kind in NO_DECAY else 0.5)
        grad = tables[name].grad
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(tables[name].detach(), before[name] - rate * (grad + decay * before[name]))


def test_a_mixed_model_refuses_bad_rates_and_recipes_that_clash(monkeypatch, tmp_path):
    multi = mixed_model()
    for argument in ("lr", "offset_lr", "weight_decay"):
        with pytest.raises(ValueError, match=f"^{argument} must be a finite number >= 0"):
            multi.parameter_groups(**{argument: -1.0})
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, learning_rate=0.3)
    optimizer, scheduler = trainer_optimizers(multi, args)
    assert scheduler is None and len(optimizer.param_groups) == 7
    monkeypatch.setattr(EPT, "RECIPE", dataclasses.replace(EPT.RECIPE, lr=0.2))
    with pytest.raises(ValueError, match=r"^bank\.prompts holds tensors of methods whose recipes give it different"):
        multi.parameter_groups()
    assert len(multi.parameter_groups(lr=0.1)) == 7  # one rate given: no clash
