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

import contextlib
import dataclasses
import warnings

import torch
from torch import nn

from prompt_ops.methods.lpt import LPT
from prompt_ops.models.configs import LPTConfig, check_config
from prompt_ops.models.inputs import (
    check_generate_inputs,
    check_generate_kwargs,
    check_generated_length,
    check_generation_fits,
    check_ids,
    check_length,
    check_model_labels,
    check_position_ids,
    check_token_type_ids,
)
from prompt_ops.models.stacks import LayerStack, bind, find_stack
from prompt_ops.models.tuned import TunedModel, model_embedding
from prompt_ops.ops.backend import resolve_check_ids
from prompt_ops.ops.validation import check_ids_in_range, check_same_device


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


def lpt_stack(model: nn.Module) -> LayerStack:
    """The layer stack LPT hooks into, for a supported model without gradient checkpointing and without an LPT
    already attached."""
    stack = find_stack(model)
    flag = (
        "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
    )
    if getattr(model, flag, False):
        raise ValueError("LPT does not support gradient checkpointing: layers above k re-run without their hooks")
    if any(
        isinstance(getattr(hook, "__self__", None), LatePromptTunedModel)
        for hook in stack.entry._forward_pre_hooks.values()
    ):
        raise ValueError(
            "model already has an LPT attached (a LatePromptTunedModel hooks its layer stack): call unload() on it "
            "first, or attach to a fresh copy of the model"
        )
    return stack


class LatePromptTunedModel(TunedModel):
    """A frozen Hugging Face model with LPT's generator inside its stack. Only ``prompt_module`` trains."""

    def __init__(self, model: nn.Module, config: LPTConfig, backend: str | None = None):
        super().__init__()
        config = check_config(config, (LPTConfig,))
        embedding = model_embedding(model)
        self.stack: LayerStack = lpt_stack(model)
        self.config = config.resolved(len(self.stack.layers), self.stack.causal)
        self.prompt_module: LPT = self.config.build(embedding, backend=backend)  # checks every field first
        self.prompt_module.to(embedding.weight.device)
        model.requires_grad_(False)
        self.base_model = model
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False)) and self.stack.family == "t5"
        self._call: _Call | None = None
        self._handles = self._install_hooks(self.config.layer)
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
        tokens, embeds = bound.get("input_ids"), bound.get("inputs_embeds")
        if tokens is None and embeds is None:
            return  # the model itself refuses the call; nothing recorded, nothing to restore
        if tokens is not None:
            check_ids(tokens)
            if resolve_check_ids(None):
                check_ids_in_range(tokens, self._embedding().num_embeddings)
            shape, device = tuple(tokens.shape), tokens.device
        else:
            shape, device = tuple(embeds.shape[:2]), embeds.device
        mask = bound.get("attention_mask")
        if mask is None:
            mask = torch.ones(shape, dtype=torch.int64, device=device)
        elif not isinstance(mask, torch.Tensor) or mask.dim() != 2 or tuple(mask.shape) != shape:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"LPT needs a 2-D attention_mask of shape {shape}, got {got}")
        inputs = {"input_ids": tokens} if tokens is not None else {"inputs_embeds": embeds}
        check_same_device(**inputs, attention_mask=mask, **{"the model's input embedding": self._embedding().weight})
        check_token_type_ids(bound.get("token_type_ids"), shape)
        positions = bound.get("position_ids")
        check_position_ids(positions, shape)
        if positions is None:
            positions = torch.arange(shape[1], device=device)[None, :]  # (B or 1, L), as the models take them
        self._call = _Call(mask, positions, torch.is_grad_enabled())
        torch.set_grad_enabled(False)  # the embeddings and layers 1..k: nothing to train, nothing to record

    def _leave(self, entry, args, output):
        """Registered with ``always_call=True``: runs however the pass ends, an exception included."""
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
        return super().unload()

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

    @contextlib.contextmanager
    def _restoring(self):
        """However the call ends, the caller's grad mode is back and no pass is left half-recorded (the hooks
        restore it too; this also covers interrupts that skip them)."""
        grad_enabled = torch.is_grad_enabled()
        try:
            yield
        finally:
            torch.set_grad_enabled(grad_enabled)
            self._call = None

    def forward(self, *args, **kwargs):
        """The base model's forward, with LPT inside its stack. Outputs have the input's length."""
        self._check_loaded()
        self._check_no_cache(kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            shape = tuple(check_ids(ids).shape)
            check_length(self.base_model, shape[1], f"input_ids' {shape[1]} tokens")
            check_model_labels(kwargs.get("labels"), shape, self.base_model)
        with self._restoring():
            return self.base_model(*args, **kwargs)

    @torch.no_grad()
    def generate(self, *args, **kwargs) -> torch.Tensor:
        """The base model's ``generate``. Decoder-only models: without a KV cache (``use_cache=False``; each step
        recomputes the whole sequence, because each new token changes the prompt), so the tokens equal a greedy
        loop of full forward passes. T5: the prompt acts in the encoder, which runs once; the decoder caches."""
        self._check_loaded()
        if self.training:
            warnings.warn("generate() in training mode: LPT's dropout acts on the prompt; call .eval()", stacklevel=2)
        self._check_no_cache(kwargs)
        check_generate_kwargs(kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None and not self.is_encoder_decoder:
            raise ValueError("LatePromptTunedModel.generate needs input_ids (LPT regenerates the prompt from them)")
        if ids is not None:
            check_generate_inputs(ids, kwargs.get("attention_mask"))
            if not self.is_encoder_decoder:
                check_generated_length(self.base_model, 0, ids.shape[1], kwargs)
        check_generation_fits(self.base_model, ids.shape[0] if ids is not None else 1, kwargs)
        with self._restoring():
            return self.base_model.generate(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"method=lpt, layer={self.config.layer}, family={self.stack.family}, read={self.config.read!r}"
