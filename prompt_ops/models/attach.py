"""Attach a prompt-tuning method to a loaded Hugging Face model: ``attach(model, config) -> PromptTunedModel``.

What PEFT's prompt tuning does, on our fused ops (reference/methods.md §0.3, §6):

- the base model is frozen; the method's module wraps its input embedding (``model.get_input_embeddings()``);
- ``forward(input_ids=..., attention_mask=..., labels=..., **kwargs)`` builds ``inputs_embeds`` and the extended
  mask with the method's fused op and calls the base model with ``inputs_embeds=``;
- encoder-only and decoder-only models: ``token_type_ids`` are extended with zeros over the prompt; token-level
  ``labels`` (the shape of ``input_ids``: causal LM, masked LM, token classification) get ``-100`` over the prompt,
  sequence-level labels are untouched;
- position ids (models whose forward takes ``position_ids``: GPT-2, LLaMA, BERT, RoBERTa) follow the method's
  ``positions`` option (:mod:`prompt_ops.models.positions`): the prompt rows are at ``0 .. m-1`` and the ``i``-th
  real token of a row at ``m + i`` (``"tokens"``, the default: a sequence's outputs do not depend on its padding or
  its batch mates), or every column at its index ``m + t`` in the padded sequence (``"absolute"``, what the model
  numbers without position ids). User ``position_ids`` are honoured, shifted by ``m`` behind the prompt's (PEFT
  drops them). RoBERTa numbers from ``padding_idx + 1``, and so do these;
- encoder-decoder models (T5): the prompt goes on the encoder side only; ``decoder_input_ids``,
  ``decoder_attention_mask`` and ``labels`` pass through unchanged;
- decoder-only GPT-2, LLaMA, Mistral and Qwen2 run the prompt rows once per call, not once per row (the shared
  prompt pass, :mod:`prompt_ops.models.shared_prompt`), with the same outputs: ``attach(..., shared_prompt=None)``
  turns it on when no dropout acts in the base model, ``True`` forces it, ``False`` turns it off.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import torch
from torch import nn

from prompt_ops.methods.base import PromptModule
from prompt_ops.models.configs import CONFIGS, LPTConfig, MethodConfig, check_config
from prompt_ops.models.inputs import (
    check_decoder_inputs,
    check_generate_kwargs,
    check_generated_length,
    check_generation_fits,
    check_ids,
    check_length,
    check_model_labels,
    check_position_ids,
    check_position_range,
    check_token_type_ids,
    first_position,
    generated_count,
)
from prompt_ops.models.late import LatePromptTunedModel
from prompt_ops.models.positions import model_position_ids, next_input_positions
from prompt_ops.models.prompt_cache import PromptCache
from prompt_ops.models.shared_prompt import (
    PromptPass,
    cache_argument,
    call_refusal,
    check_shared_prompt,
    generate_copies,
    generate_refusal,
    log_fallback,
    prompt_pass,
    shared_forward,
    wants_hidden_states,
)
from prompt_ops.models.tuned import TunedModel, model_embedding


class DecodeEmbedding(nn.Module):
    """Stands in for the input embedding while a decoder-only model generates: the tokens produced after the
    prefill get the adapter's per-token treatment for their input positions, ``embed_tokens(input_ids, start,
    *rows)`` (:meth:`PromptModule.embed_tokens`; a mixed batch's :meth:`AdapterBank.embed_tokens
    <prompt_ops.models.bank.AdapterBank.embed_tokens>`), so that cached generation sees what a full forward pass
    would. ``embedding``: the table it stands in for (its ``weight`` is what transformers may read). ``start
    (B,)``: each row's input position (prompt excluded) of its first generated token; ``rows``: other ``(B,)``
    per-row tensors ``embed_tokens`` takes (a mixed batch's adapter index)."""

    def __init__(
        self,
        embedding: nn.Embedding,
        embed_tokens: Callable[..., torch.Tensor],
        start: torch.Tensor,
        *rows: torch.Tensor,
    ):
        super().__init__()
        self.embedding = embedding
        self.embed_tokens = embed_tokens
        self.position = start  # (B,) input position of the next token embedded in each row
        self.rows = rows

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # generate expands each row into consecutive copies (beams, return sequences), which share its position
        # and its other per-row values
        copies = input_ids.shape[0] // self.position.shape[0]
        rows = [row.repeat_interleave(copies) for row in self.rows]
        embeds = self.embed_tokens(input_ids, self.position.repeat_interleave(copies), *rows)
        self.position = self.position + input_ids.shape[1]
        return embeds


class PromptTunedModel(TunedModel):
    """A frozen Hugging Face model behind a prompt-tuning method. Only ``prompt_module``'s parameters train.

    The config is checked and the module built before the model is touched: a refused config leaves it as it was.
    ``shared_prompt``: the shared prompt pass (:mod:`prompt_ops.models.shared_prompt`) for decoder-only GPT-2,
    LLaMA, Mistral and Qwen2; None (auto) runs it on each call where no dropout acts in the base model, True forces
    it (with dropout active, the prompt rows then share one dropout mask across the batch), False turns it off.
    Calls it does not cover run the unshared path, saying why at debug level. Without grad and dropout (eval
    forward, ``generate``) the prompt's pass is computed once per adapter state and kept in ``prompt_cache``
    (:mod:`prompt_ops.models.prompt_cache`: rebuilt after any change to a parameter, never served stale).
    """

    def __init__(
        self, model: nn.Module, config: MethodConfig, backend: str | None = None, shared_prompt: bool | None = None
    ):
        super().__init__()
        config = check_config(config, PROMPT_CONFIGS)
        embedding = model_embedding(model)
        self.shared_prompt = check_shared_prompt(shared_prompt, model, input_dependent=False)
        self.prompt_module: PromptModule = config.build(embedding, backend=backend)  # checks every field first
        self.config = config.snapshot()
        model.requires_grad_(False)
        self.base_model = model
        self.is_encoder_decoder = is_encoder_decoder(model)
        self.takes_position_ids = takes_position_ids(model)
        self.prompt_cache = PromptCache()
        self.train(model.training)  # the method's dropout follows the model's mode

    @property
    def num_prompt_rows(self) -> int:
        """Rows the prompt adds in front of the input (LAMP: after pooling)."""
        return getattr(self.prompt_module, "num_prompt_rows", self.prompt_module.num_tokens)

    def _position_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The base model's ``(B, m + L)`` ``position_ids`` for the prompted input (module docstring), or None for a
        model that takes none. Arguments checked before (the mask by the prompt module)."""
        if not self.takes_position_ids:
            return None
        shape = tuple(input_ids.shape)
        return model_position_ids(
            attention_mask,
            self.prompt_module.positions,
            shape,
            input_ids.device,
            self.num_prompt_rows,
            first_position(self.base_model),
            position_ids,
        ).expand(shape[0], -1)

    def _prompt_pass(self, embeds: torch.Tensor, model_positions: torch.Tensor, hidden: bool) -> PromptPass:
        """The shared prompt pass over the prompt rows of ``embeds (B, m + L, d)`` at ``model_positions``' first
        ``m`` (the same in every row), from ``prompt_cache`` where it may be kept."""
        rows = self.num_prompt_rows
        return self.prompt_cache.get(
            self, lambda states: prompt_pass(self.base_model, embeds[:1, :rows], model_positions[:1, :rows], states),
            hidden,
        )  # fmt: skip

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ):
        self._check_loaded()
        if inputs_embeds is not None or input_ids is None:
            raise ValueError(
                "PromptTunedModel needs input_ids (the methods' offsets are computed from the token ids); "
                "inputs_embeds is not supported"
            )
        num_prompt = self.num_prompt_rows
        token_labels = check_prompted_call(
            self.base_model, num_prompt, input_ids, labels, token_type_ids, position_ids, kwargs
        )
        batch = input_ids.shape[0]
        self._embedding()  # refuses a sharded table (FSDP2) with how to shard instead
        embeds, mask = self.prompt_module(input_ids, attention_mask)
        model_positions = self._position_ids(input_ids, attention_mask, position_ids)
        if self.is_encoder_decoder:
            return self.base_model(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)
        if token_labels:
            labels = prompted_labels(labels, num_prompt)
        refusal = call_refusal(self.base_model, self.shared_prompt, kwargs, token_type_ids, labels, batch)
        if refusal is None:
            prompt = self._prompt_pass(embeds, model_positions, wants_hidden_states(self.base_model, kwargs))
            return shared_forward(self.base_model, embeds, mask, model_positions, labels, prompt, kwargs)
        log_fallback(refusal)
        return call_prompted(self.base_model, embeds, mask, labels, model_positions, token_type_ids, kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Generate with the base model's ``generate`` and its KV cache; the prompt is injected at prefill only.

        Decoder-only models: returns ``cat(input_ids, new tokens)``, the Hugging Face convention. The tokens generated
        later get the same per-token treatment a full forward pass gives them (DePT/EPT position offsets while the
        position is below ``max_length``, none after; ADePT's FFN offset), so cached generation matches a loop of
        full forward passes. The official DePT/ADePT code skips the offsets after prefill. Positions as in
        ``forward``: the prefill takes the position ids a forward pass gives (``position_ids`` honoured), and each
        row's generated tokens continue from its own last position (under ``"tokens"`` the left padding that
        generation uses counts nothing), for the model's position ids and the DePT/EPT offsets alike.
        With the shared prompt pass on (the class docstring), the prefill starts from the prompt's cached keys and
        values (expanded to the batch, beams and returned sequences) and runs only the input tokens, with the same
        positions and offsets.
        Encoder-decoder models: the prompt goes to the encoder; returns what the base ``generate`` returns (the
        decoder's tokens). The input embedding swapped in for decoding is put back however ``generate`` ends.
        """
        self._check_loaded()
        position_ids = kwargs.pop("position_ids", None)
        batch, seq_len = check_generate_call(
            self.base_model, self.num_prompt_rows, input_ids, position_ids, kwargs, "PromptTunedModel"
        )
        if self.training:
            warnings.warn("generate() in training mode: ADePT's dropout acts at prefill; call .eval()", stacklevel=2)
        embeds, mask = self.prompt_module(input_ids, attention_mask)
        if self.is_encoder_decoder:
            return self.base_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        model_positions = self._position_ids(input_ids, attention_mask, position_ids)
        refusal = generate_refusal(self.base_model, self.shared_prompt, kwargs, batch)
        if refusal is None:  # transformers prefills only the embeddings past the cache's length
            prompt = self._prompt_pass(embeds, model_positions, False)
            kwargs[cache_argument(self.base_model)] = prompt.batch_cache(
                batch * generate_copies(self.base_model, kwargs)
            )
        else:
            log_fallback(refusal)
        if model_positions is not None:  # prefill as a forward; transformers continues each row from its last + 1
            kwargs["position_ids"] = model_positions
        start = next_input_positions(attention_mask, self.prompt_module.positions, (batch, seq_len), input_ids.device)
        decode = DecodeEmbedding(self.prompt_module.embedding, self.prompt_module.embed_tokens, start)
        return generate_decoding(self.base_model, decode, input_ids, embeds, mask, kwargs)

    def extra_repr(self) -> str:
        return f"method={self.config.method}, prompt_rows={self.num_prompt_rows}"


def is_encoder_decoder(model: nn.Module) -> bool:
    """Whether ``model`` is an encoder-decoder model (T5), whose prompt goes to the encoder."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def takes_position_ids(model: nn.Module) -> bool:
    """Whether the prompted input gets position ids: a model whose forward takes them, not T5 (relative)."""
    return not is_encoder_decoder(model) and "position_ids" in inspect.signature(model.forward).parameters


def check_model_position_ids(
    model: nn.Module, position_ids: torch.Tensor | None, num_prompt: int, generated: int = 0
) -> None:
    """User ``position_ids`` (their shape checked) fit ``model``: a model that takes none refuses them, a learned
    table must hold them past ``num_prompt`` prompt rows and the ``generated`` positions ``generate`` numbers after."""
    if takes_position_ids(model):
        check_position_range(model, position_ids, num_prompt, generated)
    elif position_ids is not None:
        raise ValueError(
            f"position_ids: {type(model).__name__}'s forward takes no position_ids (its positions are "
            "not given by ids); do not pass them"
        )


def check_prompted_call(
    model: nn.Module,
    num_prompt: int,
    input_ids: object,
    labels: object,
    token_type_ids: object,
    position_ids: object,
    kwargs: dict,
) -> bool:
    """A forward's arguments for ``model`` behind ``num_prompt`` prompt columns, each checked by name against
    ``input_ids (B, L)`` and the model (its position table, its head's labels, an encoder-decoder's decoder input);
    returns whether the labels are token-level (to be padded over the prompt, :func:`prompted_labels`)."""
    shape = tuple(check_ids(input_ids).shape)
    check_token_type_ids(token_type_ids, shape)
    check_position_ids(position_ids, shape)
    check_model_position_ids(model, position_ids, num_prompt)
    token_labels = check_model_labels(labels, shape, model)
    check_length(model, num_prompt + shape[1], f"the {num_prompt} prompt rows and input_ids' {shape[1]} tokens")
    if is_encoder_decoder(model):
        check_decoder_inputs(model, labels, kwargs)
    return token_labels


def prompted_labels(labels: torch.Tensor, num_prompt: int) -> torch.Tensor:
    """Token-level ``labels (B, L)`` with ``-100`` (ignored) over ``num_prompt`` prompt columns in front."""
    return torch.cat([labels.new_full((labels.shape[0], num_prompt), -100), labels], dim=1)


def check_generate_call(
    model: nn.Module,
    num_prompt: int,
    input_ids: object,
    position_ids: object,
    kwargs: dict,
    caller: str,
) -> tuple[int, int]:
    """A prompted ``generate``'s arguments for ``model`` behind ``num_prompt`` prompt columns, each checked by name
    before anything runs: no ``inputs_embeds`` (``caller``, the class, builds them), ``input_ids (B, L)``, the
    ``position_ids`` (shape, and with the positions the generation numbers after them, the model's position table),
    the length and beam arguments in ``kwargs``, the lengths they make (the prompt on an encoder-decoder's encoder;
    a decoder-only model numbers the prompt, the input and all but the last new token) and the memory they need.
    Returns ``(B, L)``."""
    if "inputs_embeds" in kwargs:
        raise ValueError(f"{caller}.generate builds inputs_embeds from input_ids; do not pass inputs_embeds")
    batch, seq_len = check_ids(input_ids).shape
    check_position_ids(position_ids, (batch, seq_len))
    check_generate_kwargs(kwargs)
    generated = 0  # positions numbered after the input's (the last new token is not read back)
    if is_encoder_decoder(model):
        check_length(model, num_prompt + seq_len, f"the {num_prompt} prompt rows and input_ids' {seq_len} tokens")
    else:
        check_generated_length(model, num_prompt, seq_len, kwargs)
        generated = generated_count(model, num_prompt, seq_len, kwargs)[0] - 1
    check_model_position_ids(model, position_ids, num_prompt, generated)
    check_generation_fits(model, batch, kwargs)
    return batch, seq_len


def generate_decoding(
    model: nn.Module,
    decode: DecodeEmbedding,
    input_ids: torch.Tensor,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    kwargs: dict,
) -> torch.Tensor:
    """A decoder-only ``model``'s ``generate`` from the prompted ``embeds (B, m + L, d)`` and ``mask`` with
    ``decode`` standing in for its input embedding, put back however ``generate`` ends. Returns ``cat(input_ids,
    new tokens)``, each row's input ids repeated for its consecutive copies (``num_return_sequences``)."""
    original = model.get_input_embeddings()
    model.set_input_embeddings(decode)
    try:
        new_tokens = model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
    finally:
        model.set_input_embeddings(original)
    inputs = input_ids.repeat_interleave(new_tokens.shape[0] // input_ids.shape[0], dim=0)
    return torch.cat([inputs, new_tokens.to(input_ids.dtype)], dim=1)


def call_prompted(
    model: nn.Module,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor | None,
    model_positions: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    kwargs: dict,
):
    """The decoder-only or encoder ``model`` on the prompted input ``embeds (B, m + L, d)`` and ``mask``, with its
    ``position_ids`` (where it takes them) and the user's ``token_type_ids (B, L)`` extended with zeros over the
    prompt; ``labels`` already padded over the prompt where token-level."""
    if model_positions is not None:
        kwargs["position_ids"] = model_positions
    if token_type_ids is not None:
        zeros = token_type_ids.new_zeros((token_type_ids.shape[0], embeds.shape[1] - token_type_ids.shape[1]))
        kwargs["token_type_ids"] = torch.cat([zeros, token_type_ids], dim=1)
    return model(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)


PROMPT_CONFIGS = tuple(cls for cls in CONFIGS.values() if cls is not LPTConfig)


def attach(
    model: nn.Module, config: MethodConfig, backend: str | None = None, shared_prompt: bool | None = None
) -> TunedModel:
    """Freeze ``model`` and add the method of ``config``: a :class:`PromptTunedModel` for the methods that build the
    model input, a :class:`~prompt_ops.models.late.LatePromptTunedModel` for LPT (inside the layer stack). Every
    argument is checked before the model is touched. ``shared_prompt`` as :class:`PromptTunedModel` takes it; LPT's
    prompt depends on the input, so it never shares it and refuses ``True``."""
    if isinstance(check_config(config), LPTConfig):
        check_shared_prompt(shared_prompt, model, input_dependent=True)
        return LatePromptTunedModel(model, config, backend=backend)
    return PromptTunedModel(model, config, backend=backend, shared_prompt=shared_prompt)
