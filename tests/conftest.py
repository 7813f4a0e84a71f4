"""Test set-up. The first lines switch the Triton interpreter on before anything can import triton (DESIGN.md §4).

Where the tests run: with the interpreter (the default here) every tensor lives on the CPU. With
``TRITON_INTERPRET=0`` on a machine with CUDA (``make gpu-check``), torch's default device becomes the GPU, so the
builders in ``tests/helpers.py`` and every tensor a test makes without naming a device land there and the Triton
backend runs the compiled kernels natively. Tests that must stay on the CPU name ``device="cpu"``.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import atexit  # noqa: E402
import dataclasses  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

INTERPRET = os.environ["TRITON_INTERPRET"] not in ("", "0")
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"

if INTERPRET:
    import triton.runtime.interpreter as interpreter

    # Debug mode makes tl.device_assert fire and checks int32 overflow in index arithmetic.
    interpreter.interpreter_builder.options = dataclasses.replace(interpreter.interpreter_builder.options, debug=True)

if DEVICE != "cpu":
    torch.set_default_device(DEVICE)

# Under pytest-xdist the workers share the machine's cores: each gets its share of torch's intra-op threads, so
# ``-n 2`` on two cores runs two threads, not four fighting over two (the timing-based bench tests slowed fivefold).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

# Hypothesis keeps its example database and the constants it reads from test modules (at collection) under its home
# directory, ``.hypothesis`` in the working directory by default: tests write nothing into the checkout.
HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="prompt-ops-hypothesis-")
atexit.register(shutil.rmtree, HYPOTHESIS_HOME, ignore_errors=True)
set_hypothesis_home_dir(HYPOTHESIS_HOME)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device() -> str:
    """Where Triton kernels run: the CPU under the interpreter, else the GPU."""
    return DEVICE
