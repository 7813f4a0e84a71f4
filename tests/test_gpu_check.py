"""``make gpu-check`` without a GPU: the dry run's listing, the refusal without CUDA, the results' rendering into
README, the tests' time budget, and the token-id check's measurement loop (run on the CPU)."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from bench.gpu_report import README_END, README_START, render_readme
from bench.id_check import IdCheckCost, measure_id_check

ROOT = Path(__file__).resolve().parents[1]
OPS = ("prompt_embed", "dept_embed", "adept_embed", "lamp_embed", "ept_embed", "lpt_insert")


def test_dry_run_lists_commands_tests_rows_and_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("the dry run must not look for CUDA"))
    out = tmp_path / "gpu"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    listing = capsys.readouterr().out
    assert "dry run" in listing
    command = next(line.strip() for line in listing.splitlines() if "-m pytest" in line)
    assert command.startswith("TRITON_INTERPRET=0 ")
    assert " -x " in command and command.endswith(" tests/kernels tests/ops")
    assert f"--junitxml={out / 'junit.xml'}" in command
    for path in ("tests/kernels/test_dept_embed_kernel.py", "tests/ops/test_ept_op.py"):
        assert path in listing
    cases = [line.strip() for line in listing.splitlines() if line.startswith("   ") and " B=" in line]
    assert sorted(c.split(" L=")[0] for c in cases) == sorted(f"{op} B={b}" for op in OPS for b in (1, 8, 32))
    assert all("L=256 d=768" in c for c in cases)
    assert cases[0].startswith("prompt_embed B=8")  # the reference batch first: a spent budget cuts B=1
    assert "18 cases x providers naive, compiled, torch, triton x modes forward, backward, full = 216 rows" in listing
    assert "PROMPT_OPS_CHECK_IDS=1 vs 0" in listing
    assert f"results: {out}/ (gpu_check.json, gpu_check.md, pytest.log, junit.xml)" in listing
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("cuda_build", [None, "12.8"], ids=["cpu-build", "no-device"])
def test_without_cuda_it_stops_with_a_clear_message(cuda_build, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    readme = (ROOT / "README.md").read_text()
    interpret = os.environ.get("TRITON_INTERPRET")
    assert gpu_check.main(["--out", str(tmp_path / "gpu")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("gpu-check: no CUDA device found")
    assert ("CPU-only build" in error) == (cuda_build is None)
    assert "DRY_RUN=1" in error
    assert not (tmp_path / "gpu").exists()
    assert os.environ.get("TRITON_INTERPRET") == interpret and (ROOT / "README.md").read_text() == readme


def test_readme_paragraph_is_generated_from_the_results():
    results = ROOT / "bench" / "results" / "gpu" / "gpu_check.json"
    readme = (ROOT / "README.md").read_text()
    section = readme.split(README_START, 1)[1].split(README_END, 1)[0]
    expected = render_readme(json.loads(results.read_text()) if results.is_file() else None)
    assert section == "\n" + expected
    if not results.is_file():
        assert "pending" in section and "make gpu-check" in section.replace("\n", " ")


def _results(on_ms: float, off_ms: float) -> dict:
    row = {"op": "dept_embed", "provider": "triton", "mode": "forward", "batch": 8, "seq_len": 256, "hidden": 768,
           "correct": True, "gpu_ms": 0.02, "gpu_p20_ms": 0.019, "gpu_p80_ms": 0.021, "gbps": 700.0,
           "peak_bandwidth_pct": 20.9, "peak_allocated_mb": 80.0}  # fmt: skip
    return {
        "environment": {"device": "NVIDIA H100 80GB HBM3", "peak_bandwidth_gbps": 3352.3, "cpu": "x86, 16 cores",
                        "torch": "2.13.0", "triton": "3.9.0", "commit": "abc1234", "date": "2026-12-01"},
        "tests": {"selection": ["tests/kernels", "tests/ops"], "returncode": 0, "timed_out": False,
                  "summary": "300 passed in 95.0s"},
        "check_ids": IdCheckCost(model="gpt2-small-random", method="dept", device="cuda:0", backend="triton",
                                 batch=8, seq_len=128, steps=20, repeats=5, on_ms=on_ms, on_p20_ms=on_ms,
                                 on_p80_ms=on_ms, off_ms=off_ms, off_p20_ms=off_ms, off_p80_ms=off_ms,
                                 syncs_per_step_on=3, syncs_per_step_off=1).record(),
        "bench": {"budget_s": 150, "seconds": 120.0, "skipped": ["lpt_insert B=1 L=256 d=768 r=128"], "errors": [],
                  "rows": gpu_check_rows([row])},
    }  # fmt: skip


def gpu_check_rows(rows: list[dict]) -> list[dict]:
    """The rows as ``run_bench`` leaves them: joined with a CPU bench whose projection for the row is 25 us."""
    from bench.gpu_report import cpu_projection

    cpu = [{**{k: rows[0][k] for k in ("op", "provider", "mode", "batch", "seq_len", "hidden")}, "launches": 1,
            "bytes": 14_224_128, "h100_us": 25.0}]  # fmt: skip
    return cpu_projection(rows, cpu)


@pytest.mark.parametrize(("on_ms", "verdict"), [(10.1, "keeping `check_ids` on"), (10.5, "switching `check_ids` off")])
# 1% of a 10 ms step stays under the 2% threshold, 5% does not
def test_results_render_the_table_and_the_supported_default(on_ms, verdict, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_START}\nold\n{README_END}\n\n## next\n")
    results = _results(on_ms, 10.0)
    row = results["bench"]["rows"][0]
    assert (row["cpu_bytes"], row["h100_proj_us"]) == (14_224_128, 25.0)
    assert row["measured_over_projection"] == pytest.approx(20.0 / 25.0)  # 0.02 ms measured, 25 us projected
    gpu_check.write_results(results, tmp_path / "gpu", readme=readme)
    assert json.loads((tmp_path / "gpu" / "gpu_check.json").read_text()) == results
    table = (tmp_path / "gpu" / "gpu_check.md").read_text()
    assert (
        "| dept_embed | forward | triton | 8 | 0.0200 (0.0190-0.0210) | 700.0 | 20.9 | 25.0 | 0.80 | 80.0 | yes |"
        in table
    )
    assert "Not reached within the budget: lpt_insert B=1" in table
    text = readme.read_text()
    paragraph = text.split(README_START, 1)[1].split(README_END, 1)[0].replace("\n", " ")
    assert f"{on_ms - 10.0:.3f} ms per training step" in paragraph and verdict in paragraph
    assert "3 host syncs per step with it and 1 without" in paragraph
    assert text.startswith("# x\n\n") and text.endswith(f"{README_END}\n\n## next\n")


def test_tests_phase_is_interrupted_at_its_budget(tmp_path):
    """A run past its budget gets SIGINT (pytest then still writes its summary) and is reported as timed out."""
    sleeper = (sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)")
    plan = gpu_check.Plan(out=tmp_path, test_command=sleeper, test_budget_s=1, cases=(), bench_budget_s=0)
    report = gpu_check.run_tests(plan)
    assert report["timed_out"] and report["returncode"] != 0 and report["seconds"] < 30
    assert "started" in (tmp_path / "pytest.log").read_text()


@pytest.mark.parametrize("env_before", [None, "1"])
def test_id_check_loop_measures_both_settings_and_restores_everything(env_before, monkeypatch):
    transformers = pytest.importorskip("transformers")
    if env_before is None:
        monkeypatch.delenv("PROMPT_OPS_CHECK_IDS", raising=False)
    else:
        monkeypatch.setenv("PROMPT_OPS_CHECK_IDS", env_before)
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=128)
    model = transformers.GPT2LMHeadModel(config).to("cpu").eval()
    model.transformer.wte.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    cost = measure_id_check(model, "tiny", batch=2, seq_len=8, steps=1, repeats=2)
    assert cost.on_ms > 0 and cost.off_ms > 0 and cost.backend == "torch"
    assert cost.syncs_per_step_on is None  # counted on CUDA only
    assert os.environ.get("PROMPT_OPS_CHECK_IDS") == env_before
    assert not model.training and [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(ValueError, match="repeats must be an int >= 2"):
        measure_id_check(model, "tiny", repeats=1)
