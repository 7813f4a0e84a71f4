"""``make gpu-check``: the first run on a machine with a CUDA GPU, one command of a few minutes.

1. **Tests**: ``pytest -x tests/kernels tests/ops`` with ``TRITON_INTERPRET=0``: the kernel and op tiers with the
   kernels compiled for the GPU and the tensors on it (``tests/conftest.py``'s ``device`` fixture), within a time
   budget (interrupted at its end, so that pytest still writes its summary and ``junit.xml``).
2. **What the default token-id check costs** (:mod:`bench.id_check`): DePT training on a small random GPT-2, the
   check on and off.
3. **Op bench**, the batch sweep (B = 8, 32, 1 at L=256, d=768, every family and provider, forward / backward /
   full) timed with ``triton.testing.do_bench``: GB/s against the ideal bytes and the share of this GPU's peak
   bandwidth, next to the CPU bench's H100 projection for the same rows (``bench/results/ops.json``). The cases run
   in that order until the budget is spent; the rest are listed as not reached.

Sized to fit 8 minutes on one H100-class GPU with the set-up: 120 s for the tests, about half a minute for the id
check, 120 s for the bench (a case begun within the budget finishes), the rest for imports and compiles.

Writes ``bench/results/gpu/``: ``gpu_check.json``, ``gpu_check.md``, ``pytest.log``, ``junit.xml``, and rewrites
README's GPU-check paragraph from the JSON (:mod:`bench.gpu_report`). ``--dry-run`` lists all of it without CUDA;
without a CUDA device the check stops at once with a message that says so. Exit status: 0 when the tests passed and
every bench row matched the reference, 1 otherwise, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OUT = ROOT / "bench" / "results" / "gpu"
CPU_RESULTS = ROOT / "bench" / "results" / "ops.json"
TEST_SELECTION = ("tests/kernels", "tests/ops")
BATCH_ORDER = (8, 32, 1)  # the reference batch first: a spent budget cuts from the end
ID_CHECK = {"model": "gpt2-small-random", "batch": 8, "seq_len": 128, "steps": 20, "repeats": 5}


class NoCudaError(RuntimeError):
    """The GPU check needs a CUDA device and a CUDA build of torch."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a GPU check runs and where its results go."""

    out: Path
    test_command: tuple[str, ...]
    test_budget_s: int
    cases: tuple[tuple[str, object], ...]  # (op, bench.measure.EmbedShape)
    bench_budget_s: int

    @property
    def files(self) -> dict[str, Path]:
        return {name: self.out / name for name in ("gpu_check.json", "gpu_check.md", "pytest.log", "junit.xml")}


def build_plan(out: Path, test_budget_s: int, bench_budget_s: int, workers: int) -> Plan:
    """The tests' command line and the bench cases (:func:`bench.run.op_shapes`'s batch sweep, every family)."""
    from bench.measure import DEFAULT_RANKS
    from bench.run import op_shapes

    command = (sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-n", str(workers), "-rfE",
               "--durations=15", f"--junitxml={out / 'junit.xml'}", *TEST_SELECTION)  # fmt: skip
    shapes = sorted(op_shapes(quick=True), key=lambda s: BATCH_ORDER.index(s.batch))
    cases = tuple((op, dataclasses.replace(shape, rank=rank)) for shape in shapes for op, rank in DEFAULT_RANKS.items())
    return Plan(out, command, test_budget_s, cases, bench_budget_s)


def case_label(op: str, shape) -> str:
    return f"{op} B={shape.batch} L={shape.seq_len} d={shape.hidden} r={shape.rank}"


DRY_RUN_HEADER = "gpu-check plan (dry run: nothing runs, no CUDA needed)"


def describe(plan: Plan, header: str = DRY_RUN_HEADER) -> str:
    """The listing (the dry run's output, and the real run's opening): commands, test selection, bench rows,
    id-check settings, result files."""
    from bench.measure import MODES, PROVIDERS

    def shown(path: Path) -> str:
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

    command = " ".join(shown(Path(part)) if part == sys.executable else part.replace(f"{ROOT}/", "")
                       for part in plan.test_command)  # fmt: skip
    test_files = sorted(str(p.relative_to(ROOT)) for d in TEST_SELECTION for p in (ROOT / d).glob("test_*.py"))
    lines = [
        header,
        "0. set-up (make): the virtual environment .venv, reused while .venv/.prompt-ops-installed is newer than "
        "pyproject.toml, setup.py and the Makefile",
        f"1. tests, TRITON_INTERPRET=0 (kernels compiled for the GPU, tensors on cuda), budget {plan.test_budget_s} s:",
        f"   TRITON_INTERPRET=0 {command}",
        f"   selection: {' '.join(TEST_SELECTION)} ({len(test_files)} files: {', '.join(test_files)})",
        f"2. token-id check cost: DePT on {ID_CHECK['model']}, B={ID_CHECK['batch']}, L={ID_CHECK['seq_len']}, "
        f"{ID_CHECK['repeats']} loops of {ID_CHECK['steps']} queued steps, PROMPT_OPS_CHECK_IDS=1 vs 0",
        f"3. op bench, triton.testing.do_bench, PROMPT_OPS_CHECK_IDS=0, budget {plan.bench_budget_s} s: "
        f"{len(plan.cases)} cases x providers {', '.join(PROVIDERS)} x modes {', '.join(MODES)} "
        f"= {len(plan.cases) * len(PROVIDERS) * len(MODES)} rows, beside the H100 projection of {shown(CPU_RESULTS)}",
        *(f"   {case_label(op, shape)}" for op, shape in plan.cases),
        f"results: {shown(plan.out)}/ ({', '.join(plan.files)}); README's GPU-check paragraph rewritten from "
        f"{plan.files['gpu_check.json'].name}",
    ]
    return "\n".join(lines) + "\n"


def require_cuda() -> str:
    """The name of CUDA device 0, or :class:`NoCudaError` saying what is missing."""
    import torch

    if torch.version.cuda is None:
        raise NoCudaError(
            f"no CUDA device found: this torch ({torch.__version__}) is a CPU-only build. Rebuild the virtual "
            f"environment with a CUDA build (make clean, then make gpu-check TORCH_SPEC=<a CUDA torch wheel or "
            f"requirement>), or run `make gpu-check DRY_RUN=1` to list the check."
        )
    if not torch.cuda.is_available():
        raise NoCudaError(
            f"no CUDA device found (torch {torch.__version__} built for CUDA {torch.version.cuda}, but "
            f"torch.cuda.is_available() is False: no GPU or driver visible). `make gpu-check DRY_RUN=1` lists the "
            f"check without one."
        )
    return torch.cuda.get_device_name(0)


def _summary(log: Path) -> str:
    """pytest's closing line (``12 passed, 1 failed in 80.1s``), or the log's last line."""
    lines = [line.strip("= ") for line in log.read_text(errors="replace").splitlines() if line.strip()]
    finals = [line for line in lines if " in " in line and any(w in line for w in ("passed", "failed", "error"))]
    return (finals or lines or ["no output"])[-1]


def run_tests(plan: Plan) -> dict:
    """The test command with ``TRITON_INTERPRET=0``; at the budget's end SIGINT (pytest still reports), then kill."""
    log = plan.files["pytest.log"]
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    start = time.monotonic()
    with log.open("w") as handle:
        process = subprocess.Popen(plan.test_command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        timed_out = False
        try:
            returncode = process.wait(timeout=plan.test_budget_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGINT)
            try:
                returncode = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                returncode = process.wait()
    tail = log.read_text(errors="replace").splitlines()[-25:]
    print("\n".join(tail))
    return {
        "command": ["TRITON_INTERPRET=0", *plan.test_command], "selection": list(TEST_SELECTION),
        "returncode": returncode, "timed_out": timed_out, "seconds": time.monotonic() - start,
        "budget_s": plan.test_budget_s, "summary": _summary(log), "log": log.name, "junit": "junit.xml",
    }  # fmt: skip


def _error(err: Exception) -> str:
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0][:300] if lines else ''}"


def run_id_check() -> dict:
    """:func:`bench.id_check.measure_id_check` on the GPU, with the default it supports (``{"error": ...}`` if it
    raised, so that the other phases still report)."""
    from bench.id_check import measure_id_check
    from prompt_ops.models.presets import load_model

    settings = {k: v for k, v in ID_CHECK.items() if k != "model"}
    try:
        cost = measure_id_check(load_model(ID_CHECK["model"]).to("cuda"), ID_CHECK["model"], **settings)
    except Exception as err:  # reported in the results and the exit status
        return {"error": _error(err)}
    return cost.record()


def run_bench(plan: Plan) -> dict:
    """Every case while the budget lasts (a case that raises is recorded and the next one runs), the token-id check
    off, rows joined with the CPU bench's projection."""
    from bench.gpu_report import cpu_projection
    from bench.id_check import check_ids_setting
    from bench.measure import measure_case

    start = time.monotonic()
    rows, skipped, errors = [], [], []
    with check_ids_setting(False):
        for op, shape in plan.cases:
            label = case_label(op, shape)
            if time.monotonic() - start > plan.bench_budget_s:
                skipped.append(label)
                continue
            print(f"bench: {label}", flush=True)
            try:
                rows += [dataclasses.asdict(row) for row in measure_case(op, shape, device="cuda")]
            except Exception as err:  # recorded, so that one broken case does not lose the others
                errors.append(f"{label}: {_error(err)}")
    cpu_rows = json.loads(CPU_RESULTS.read_text())["rows"] if CPU_RESULTS.is_file() else []
    seconds = time.monotonic() - start
    return {"budget_s": plan.bench_budget_s, "seconds": seconds, "rows": cpu_projection(rows, cpu_rows),
            "skipped": skipped, "errors": errors}  # fmt: skip


def write_results(results: dict, out: Path, readme: Path = README) -> None:
    """``gpu_check.json``, ``gpu_check.md`` and README's paragraph."""
    from bench.gpu_report import README_END, README_START, render_markdown, render_readme
    from bench.run import update_readme

    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "gpu_check.md").write_text(render_markdown(results))
    update_readme(render_readme(results), readme, README_START, README_END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="list what would run; needs no CUDA")
    parser.add_argument("--readme-only", action="store_true", help="rewrite README's paragraph from --out, no runs")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--test-budget-s", type=int, default=120)
    parser.add_argument("--bench-budget-s", type=int, default=120)
    parser.add_argument("--workers", type=int, default=8, help="pytest-xdist workers for the tests")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.readme_only:
        from bench.gpu_report import README_END, README_START, render_readme
        from bench.run import update_readme

        results_file = out / "gpu_check.json"
        update_readme(render_readme(json.loads(results_file.read_text()) if results_file.is_file() else None),
                      README, README_START, README_END)  # fmt: skip
        print(f"rewrote README's GPU-check paragraph from {results_file}")
        return 0
    if args.dry_run:
        print(describe(build_plan(out, args.test_budget_s, args.bench_budget_s, args.workers)), end="")
        return 0
    try:
        device = require_cuda()
    except NoCudaError as err:
        print(f"gpu-check: {err}", file=sys.stderr)
        return 2
    os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: the kernels compile for the GPU
    from bench.measure import peak_bandwidth
    from bench.run import environment
    from prompt_ops.kernels.runtime import interpreting

    if interpreting():
        raise RuntimeError("triton was imported in interpreter mode before the GPU check started: run it as a script")
    plan = build_plan(out, args.test_budget_s, args.bench_budget_s, args.workers)
    out.mkdir(parents=True, exist_ok=True)
    print(describe(plan, header=f"gpu-check on {device}"), flush=True)
    results = {"environment": {**environment(), "device": device, "peak_bandwidth_gbps": peak_bandwidth("cuda") / 1e9}}
    results["tests"] = run_tests(plan)
    results["check_ids"] = run_id_check()
    results["bench"] = run_bench(plan)
    write_results(results, out)
    print(f"results: {out} (gpu_check.json, gpu_check.md, pytest.log, junit.xml); README's GPU-check paragraph")
    problems = [f"tests: {results['tests']['summary']}"] if results["tests"]["returncode"] else []
    problems += [f"id check: {results['check_ids']['error']}"] if "error" in results["check_ids"] else []
    problems += [f"differs from the reference: {r['op']} {r['provider']} {r['mode']} B={r['batch']}"
                 for r in results["bench"]["rows"] if r["correct"] is False]  # fmt: skip
    problems += results["bench"]["errors"]
    for problem in problems:
        print(f"gpu-check: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
