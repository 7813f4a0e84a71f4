"""Test set-up. The first lines switch the Triton interpreter on before anything can import triton (DESIGN.md §4)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import dataclasses  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

INTERPRET = os.environ["TRITON_INTERPRET"] not in ("", "0")

if INTERPRET:
    import triton.runtime.interpreter as interpreter

    # Debug mode makes tl.device_assert fire and checks int32 overflow in index arithmetic.
    interpreter.interpreter_builder.options = dataclasses.replace(interpreter.interpreter_builder.options, debug=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device() -> str:
    """Where Triton kernels run: the CPU under the interpreter, else the GPU."""
    return "cpu" if INTERPRET else "cuda"
