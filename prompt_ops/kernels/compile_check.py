"""Ahead-of-time sm_90 (H100) compilation of every shipped kernel config, without a GPU.

``triton.compile(..., target=GPUTarget("cuda", 90, 32))`` gives the PTX; the ``ptxas`` that ships inside triton's
wheel (``ptxas-blackwell``, which accepts triton's PTX version) reports registers and spills; the compiled metadata
gives shared memory. Must run with ``TRITON_INTERPRET`` unset (interpreted kernels cannot be compiled), so tests and
the bench call ``python -m prompt_ops.kernels.compile_check``, which prints one JSON object per config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

SM90 = GPUTarget("cuda", 90, 32)
SHARED_MEMORY_LIMIT = 227 * 1024  # bytes per block on H100


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One shipped launch configuration of a kernel: pointer dtypes, constexprs and warps."""

    label: str
    kernel: object  # a triton JITFunction
    pointer_types: dict[str, str]  # argument name -> "*fp32", "*bf16", "*i64", ...
    constexprs: dict[str, object]
    num_warps: int

    def signature(self) -> dict[str, str]:
        """Scalars: ``scale`` and ``dropout_p`` fp32, every other argument i32 (sizes and strides below 2**31)."""
        signature = {}
        for name in self.kernel.arg_names:
            if name in self.constexprs:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = self.pointer_types[name]
            else:
                signature[name] = "fp32" if name in ("scale", "dropout_p") else "i32"
        return signature


@dataclasses.dataclass(frozen=True)
class CompileStats:
    label: str
    registers: int
    spill_bytes: int
    shared_bytes: int


def _ptxas() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")


def compile_sm90(spec: KernelSpec) -> CompileStats:
    """Compile one spec for sm_90 and read its resource use."""
    compiled = triton.compile(
        ASTSource(fn=spec.kernel, signature=spec.signature(), constexprs=spec.constexprs),
        target=SM90,
        options={"num_warps": spec.num_warps},
    )
    with tempfile.TemporaryDirectory() as folder:
        ptx = os.path.join(folder, "kernel.ptx")
        with open(ptx, "w") as handle:
            handle.write(compiled.asm["ptx"])
        report = subprocess.run(
            [_ptxas(), "-arch=sm_90a", "-v", ptx, "-o", os.devnull], capture_output=True, text=True, check=True
        ).stderr
    spills = re.search(r"(\d+) bytes spill stores", report)
    registers = re.search(r"Used (\d+) registers", report)
    if spills is None or registers is None:
        raise RuntimeError(f"unexpected ptxas report for {spec.label}:\n{report}")
    return CompileStats(spec.label, int(registers.group(1)), int(spills.group(1)), int(compiled.metadata.shared))


def shipped_specs() -> list[KernelSpec]:
    """Every kernel config the package launches on a GPU, across op families."""
    from prompt_ops.kernels import adept_embed, dept_embed, ept, lamp, lpt, mixed_adept, mixed_embed, mixed_lpt

    families = (dept_embed, adept_embed, lamp, ept, lpt, mixed_embed, mixed_adept, mixed_lpt)
    return [spec for family in families for spec in family.sm90_specs()]


def main(argv: Iterable[str] = ()) -> int:
    if triton.knobs.runtime.interpret:
        print("compile_check needs TRITON_INTERPRET unset", file=sys.stderr)
        return 2
    for spec in shipped_specs():
        print(json.dumps(dataclasses.asdict(compile_sm90(spec))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
