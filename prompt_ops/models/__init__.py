"""Hugging Face integration: attach a method to a loaded model, and save / load adapters.

``attach(model, DePTConfig(...))`` freezes the model and returns a :class:`PromptTunedModel` whose forward builds
the model input with the method's fused op; ``attach(model, LPTConfig(...))`` puts LPT's generator inside the
model's layer stack (:class:`LatePromptTunedModel`). ``tuned.save_adapter(dir)`` and ``load_adapter(model, dir)``
move the method's parameters (only) through ``adapter.safetensors`` + ``adapter_config.json``.
``tuned.parameter_groups()`` splits them for ``torch.optim`` with the method's two learning rates, and
``trainer_optimizers(tuned, args)`` hands them to a ``transformers.Trainer``. Needs ``safetensors`` for
adapters; transformers is only needed to have a model.
"""

from prompt_ops.models.adapters import load_adapter, save_adapter
from prompt_ops.models.attach import PromptTunedModel, attach
from prompt_ops.models.bank import AdapterBank
from prompt_ops.models.configs import (
    ADePTConfig,
    DePTConfig,
    EPTConfig,
    LAMPConfig,
    LPTConfig,
    MethodConfig,
    PromptTuningConfig,
)
from prompt_ops.models.late import LatePromptTunedModel
from prompt_ops.models.multi import MultiAdapterModel, attach_many
from prompt_ops.models.optim import trainer_optimizers
from prompt_ops.models.peft_bridge import bridge_peft, load_bridge, save_bridge

__all__ = [
    "ADePTConfig",
    "AdapterBank",
    "DePTConfig",
    "EPTConfig",
    "LAMPConfig",
    "LPTConfig",
    "LatePromptTunedModel",
    "MethodConfig",
    "MultiAdapterModel",
    "PromptTunedModel",
    "PromptTuningConfig",
    "attach",
    "attach_many",
    "bridge_peft",
    "load_adapter",
    "load_bridge",
    "save_adapter",
    "save_bridge",
    "trainer_optimizers",
]
