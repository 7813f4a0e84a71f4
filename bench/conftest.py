"""``pytest bench/``: the interpreter is switched on before triton loads, unless a GPU is present."""

import os
import shutil

os.environ.setdefault("TRITON_INTERPRET", "0" if shutil.which("nvidia-smi") else "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
