"""Every kernel test runs under the interpreter's bounds checker (reference/triton-cpu.md §6)."""

import pytest

from tests.conftest import INTERPRET


@pytest.fixture(autouse=True)
def bounds_checked():
    """Counts traffic and raises on any load/store outside the kernel's tensor arguments."""
    if not INTERPRET:
        yield None
        return
    from prompt_ops.profiling import kernel_traffic

    with kernel_traffic(check_bounds=True) as traffic:
        yield traffic
