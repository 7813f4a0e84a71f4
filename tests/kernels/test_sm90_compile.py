"""Every shipped kernel config compiles for sm_90 (H100) without spilling (DESIGN.md §3)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prompt_ops.kernels.compile_check import SHARED_MEMORY_LIMIT

pytestmark = pytest.mark.order_independent

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_compile_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "prompt_ops.kernels.compile_check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stats = [json.loads(line) for line in result.stdout.splitlines()]
    labels = {s["label"] for s in stats}
    for kernel in ("dept_embed_fwd", "dept_embed_bwd"):
        for variant in ("dept", "prompt"):
            for dtype in ("fp32", "fp16", "bf16"):
                assert f"{kernel}[{variant},{dtype}]" in labels
    assert "dept_embed_bwd_reduce" in labels
    for kernel in ("adept_embed_fwd", "adept_embed_bwd_hidden", "adept_embed_bwd_weights"):
        for variant in ("fp32,R32", "fp16,R32", "bf16,R32", "bf16,R64"):
            assert f"{kernel}[{variant}]" in labels
    for variant in ("lamp,fp32", "lamp,bf16"):
        assert f"dept_embed_fwd[{variant}]" in labels
    for tile in ("M64,R16", "M256,R16", "M128,R32", "M64,R64"):
        assert f"lamp_factor_grad[{tile}]" in labels
    for kernel in ("ept_attention", "ept_mix", "ept_attention_bwd", "ept_knowledge_bwd"):
        assert kernel in labels
    for kernel in ("ept_project", "ept_project_bwd", "ept_gate_bwd", "ept_subspace_bwd"):
        for width in (32, 64):
            assert f"{kernel}[KH{width}]" in labels
    for kernel in ("lpt_pre", "lpt_up", "lpt_up_bwd", "lpt_pre_bwd", "lpt_down_bwd", "lpt_max_pre", "lpt_max_down_bwd"):
        for block_h in (16, 128):
            assert f"{kernel}[H{block_h}]" in labels
    for s in stats:
        assert s["spill_bytes"] == 0, s
        assert 0 < s["registers"] <= 255, s
        assert s["shared_bytes"] <= SHARED_MEMORY_LIMIT, s
