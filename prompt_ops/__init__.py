"""prompt_ops: fused Triton kernels for decomposed prompt tuning, with exact autograd.

Functional ops (``backend="auto" | "triton" | "torch"``):

- :func:`prompt_embed`: vanilla prompt tuning input, prompt rows prepended to the token embeddings.
- :func:`dept_embed`: DePT input, plus a position-wise low-rank offset ``scale * A[t] @ B``.
- :func:`adept_embed`: ADePT input, plus a token-shared FFN offset ``relu(E @ w_down + b_down) @ w_up + b_up``.
- :func:`lamp_prompt`, :func:`lamp_embed`: LAMP's prompt ``avgpool_k((u * q) @ v)`` from SVD factors, and its input.
- :func:`ept_prompt`, :func:`ept_embed`: EPT's fused, multi-space-projected prompt, and its input with DePT's offset.
- :func:`lpt_prompt`, :func:`lpt_insert`: LPT's instance-dependent prompt generated from intermediate hidden states
  (NPG or APPG), and its insertion in front of them.
- :func:`mixed_dept_embed`, :func:`mixed_adept_embed`: a mixed-adapter batch (one adapter per row) from a zero-padded
  bank in one launch: prompt-tuning and DePT-style adapters (LAMP and EPT prompts too), and ADePT adapters
  (:class:`prompt_ops.models.AdapterBank` and :func:`prompt_ops.models.attach_many` in a model).
- :func:`mixed_lpt_prompt`: the LPT prompts of a mixed-adapter batch from stacked, zero-padded generators, one
  launch set per generator mode.

Modules over a frozen ``nn.Embedding``: :class:`PromptTuning`, :class:`DePT`, :class:`ADePT`, :class:`LAMP`,
:class:`EPT`; LPT's generator :class:`LPT` (attached inside a model's layer stack by
:func:`prompt_ops.models.attach`).

``import prompt_ops`` needs neither triton nor transformers; they are imported when a path needs them.
"""

from prompt_ops.methods.adept import ADePT
from prompt_ops.methods.dept import DePT
from prompt_ops.methods.ept import EPT
from prompt_ops.methods.lamp import LAMP
from prompt_ops.methods.lpt import LPT
from prompt_ops.methods.prompt_tuning import PromptTuning
from prompt_ops.ops.adept_embed import adept_embed
from prompt_ops.ops.dept_embed import dept_embed, prompt_embed
from prompt_ops.ops.ept import ept_embed, ept_prompt
from prompt_ops.ops.lamp import lamp_embed, lamp_prompt
from prompt_ops.ops.lpt import lpt_insert, lpt_prompt
from prompt_ops.ops.mixed_adept import mixed_adept_embed
from prompt_ops.ops.mixed_embed import mixed_dept_embed
from prompt_ops.ops.mixed_lpt import mixed_lpt_prompt

__version__ = "0.1.0"

__all__ = [
    "ADePT",
    "DePT",
    "EPT",
    "LAMP",
    "LPT",
    "PromptTuning",
    "adept_embed",
    "dept_embed",
    "ept_embed",
    "ept_prompt",
    "lamp_embed",
    "lamp_prompt",
    "lpt_insert",
    "lpt_prompt",
    "mixed_adept_embed",
    "mixed_dept_embed",
    "mixed_lpt_prompt",
    "prompt_embed",
    "__version__",
]
