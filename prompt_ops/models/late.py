"""LPT inside a Hugging Face model: ``attach(model, LPTConfig(layer=k, ...)) -> LatePromptTunedModel``.

The model runs as usual; hooks on its layer stack (:mod:`prompt_ops.models.stacks`) do what the official code's
modified ``forward`` does:

1. on entering the stack, record the 2-D attention mask and turn gradients off: the embeddings and layers
   ``1..k`` run under ``no_grad``, so autograd records nothing below layer ``k``;
2. after layer ``k``, restore the caller's grad mode and replace its output with :func:`prompt_ops.lpt_insert`'s
   ``(B, n+L, d)`` buffer (generated prompt, then the layer-``k`` hidden states);
3. before every layer above ``k``, swap in the mask (and the rotary or relative position bias) for ``n + L``;
4. after the last layer, drop the ``n`` prompt rows, so the model's output has the input's length. This is what
   the official code reads: RoBERTa's mask token at ``mask_pos + n``, GPT-2's logits ``[n:]``. Heads, losses and
   ``labels`` work unchanged, and ``token_type_ids``/``position_ids`` act at the input as usual.

NPG reads token 0 of each sample (``read="first"``, the official RoBERTa choice, the default for bidirectional
models) or the last non-padding token (``read="last"``, the official GPT-2 choice, the default for causal ones).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from prompt_ops.methods.lpt import LPT
from prompt_ops.models.configs import LPTConfig
from prompt_ops.models.stacks import LayerStack, bind, find_stack
from prompt_ops.models.tuned import TunedModel


@dataclasses.dataclass
class _Call:
    """What the hooks share during one pass through the stack."""

    mask: torch.Tensor  # (B, L) 2-D keep mask of the input
    positions: torch.Tensor  # (B or 1, L) input positions
    grad_enabled: bool  # the caller's grad mode, restored above layer k
    upper: dict | None = None  # arguments of the layers above k, built after layer k


def _output_hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class LatePromptTunedModel(TunedModel):
    """A frozen Hugging Face model with LPT's generator inside its stack. Only ``prompt_module`` trains."""

    def __init__(self, model: nn.Module, config: LPTConfig, backend: str | None = None):
        super().__init__()
        self.stack: LayerStack = find_stack(model)
        flag = (
            "is_activation_checkpointing"
            if hasattr(model, "is_activation_checkpointing")
            else "is_gradient_checkpointing"
        )
        if getattr(model, flag, False):
            raise ValueError("LPT does not support gradient checkpointing: layers above k re-run without their hooks")
        num_layers = len(self.stack.layers)
        layer = config.layer if config.layer is not None else num_layers // 2
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= num_layers - 1:
            raise ValueError(
                f"layer must be an int in [1, {num_layers - 1}] for a model with {num_layers} layers, got {layer!r}"
            )
        read = config.read if config.read is not None else ("last" if self.stack.causal else "first")
        if read not in ("first", "last"):
            raise ValueError(f"read must be 'first', 'last' or None, got {read!r}")
        model.requires_grad_(False)
        self.base_model = model
        self.config = dataclasses.replace(config, layer=layer, read=read)
        embedding = self._embedding()
        self.prompt_module: LPT = self.config.build(embedding, backend=backend)
        self.prompt_module.to(embedding.weight.device)
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False)) and self.stack.family == "t5"
        self._call: _Call | None = None
        self._handles = self._install_hooks(layer)
        self.train(model.training)  # the generator's dropout follows the model's mode

    @property
    def num_tokens(self) -> int:
        return self.prompt_module.num_tokens

    # ------------------------------------------------------------------------------------------------------------
    # Hooks
    # ------------------------------------------------------------------------------------------------------------

    def _install_hooks(self, layer: int) -> list:
        stack = self.stack
        handles = [
            stack.entry.register_forward_pre_hook(self._enter, with_kwargs=True),
            stack.entry.register_forward_hook(self._leave, always_call=True),
            stack.layers[layer - 1].register_forward_hook(self._insert),
            stack.layers[-1].register_forward_hook(self._drop_prompt_rows),
        ]
        handles += [block.register_forward_pre_hook(self._extend, with_kwargs=True) for block in stack.layers[layer:]]
        return handles  # the layer hooks act only within a pass through the stack (between _enter and _leave)

    def _enter(self, entry, args, kwargs):
        bound = bind(entry, args, kwargs).arguments
        tokens = bound.get("input_ids")
        shape = tokens.shape if tokens is not None else bound["inputs_embeds"].shape[:2]
        device = tokens.device if tokens is not None else bound["inputs_embeds"].device
        mask = bound.get("attention_mask")
        if mask is None:
            mask = torch.ones(shape, dtype=torch.int64, device=device)
        elif mask.dim() != 2 or tuple(mask.shape) != tuple(shape):
            raise ValueError(f"LPT needs a 2-D attention_mask of shape {tuple(shape)}, got {tuple(mask.shape)}")
        positions = bound.get("position_ids")
        if positions is None:
            positions = torch.arange(shape[1], device=device)[None, :]  # (B or 1, L), as the models take them
        self._call = _Call(mask, positions, torch.is_grad_enabled())
        torch.set_grad_enabled(False)  # the embeddings and layers 1..k: nothing to train, nothing to record

    def _leave(self, entry, args, output):
        if self._call is not None:
            torch.set_grad_enabled(self._call.grad_enabled)
            self._call = None

    def _insert(self, layer, args, output):
        call = self._call
        if call is None:  # the layer called on its own, outside a pass through the stack
            return None
        torch.set_grad_enabled(call.grad_enabled)
        hidden = _output_hidden(output)
        index = None
        if self.config.read == "last":
            steps = torch.arange(call.mask.shape[1], device=hidden.device)
            index = (steps * (call.mask != 0)).amax(1)  # the last non-padding position of each sample
        buffer, mask = self.prompt_module(hidden, attention_mask=call.mask, index=index)
        num_tokens = self.num_tokens
        prompt_positions = torch.arange(num_tokens, device=hidden.device).expand(call.positions.shape[0], num_tokens)
        positions = torch.cat([prompt_positions, call.positions + num_tokens], dim=1)
        call.upper = self.stack.upper_layer_inputs(mask, positions, buffer)
        return _replace_hidden(output, buffer)

    def _extend(self, layer, args, kwargs):
        if self._call is None or self._call.upper is None:
            return None
        bound = bind(layer, args, kwargs)
        for name, value in self._call.upper.items():
            if name in bound.signature.parameters:
                bound.arguments[name] = value
        return bound.args, bound.kwargs

    def _drop_prompt_rows(self, layer, args, output):
        if self._call is None or self._call.upper is None:
            return None
        return _replace_hidden(output, _output_hidden(output)[:, self.num_tokens :])

    def unload(self) -> nn.Module:
        """Remove the hooks and return the base model as it was (still frozen)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.base_model

    # ------------------------------------------------------------------------------------------------------------
    # Calls
    # ------------------------------------------------------------------------------------------------------------

    def _check_no_cache(self, kwargs: dict) -> None:
        if self.is_encoder_decoder:
            return
        if kwargs.get("use_cache") or kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None:
            raise ValueError(
                "LPT's prompt depends on the whole input (NPG reads the last token, APPG pools every token), so "
                "every new token changes the prompt and a KV cache cannot be reused: use_cache must be False"
            )
        kwargs["use_cache"] = False

    def forward(self, *args, **kwargs):
        """The base model's forward, with LPT inside its stack. Outputs have the input's length."""
        self._check_no_cache(kwargs)
        return self.base_model(*args, **kwargs)

    @torch.no_grad()
    def generate(self, *args, **kwargs) -> torch.Tensor:
        """The base model's ``generate``. Decoder-only models: without a KV cache (``use_cache=False``; each step
        recomputes the whole sequence, because each new token changes the prompt), so the tokens equal a greedy
        loop of full forward passes. T5: the prompt acts in the encoder, which runs once; the decoder caches."""
        if self.training:
            warnings.warn("generate() in training mode: LPT's dropout acts on the prompt; call .eval()", stacklevel=2)
        self._check_no_cache(kwargs)
        return self.base_model.generate(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"method=lpt, layer={self.config.layer}, family={self.stack.family}, read={self.config.read!r}"
