"""``prompt-ops``: the command line. ``prompt-ops bench --model <preset or folder> --methods dept,lpt ...`` measures
prompt-tuning methods end to end on your model (:mod:`prompt_ops.end_to_end`) and prints a table: by default each
method on the unshared prompt path and, where the shared prompt pass applies (causal GPT-2, LLaMA, Mistral and
Qwen2 models, every method but LPT), on the shared one too, with the shared row's step and prefill time as a
fraction of the unshared."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def _methods(text: str) -> list[str]:
    from prompt_ops.end_to_end import METHODS

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"methods must be a comma-separated subset of {sorted(METHODS)}, got {text!r}")
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


PROMPT_PASSES = {"both": None, "unshared": False, "shared": True}
"""``--prompt-pass``: measure_paths (None) or measure_method with shared_prompt forced off or on."""


def build_parser() -> argparse.ArgumentParser:
    from prompt_ops.end_to_end import DTYPES, METHODS
    from prompt_ops.models.presets import PRESETS

    parser = argparse.ArgumentParser(prog="prompt-ops", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="end-to-end training and inference timings of methods on a model")
    presets = ", ".join(f"{name} ({about})" for name, about in PRESETS.items())
    bench.add_argument("--model", default="minilm", help=f"a local Hugging Face folder or a preset: {presets}")
    bench.add_argument("--methods", type=_methods, default=list(METHODS), help=f"comma-separated, from {list(METHODS)}")
    bench.add_argument("--batch", type=_positive, default=8)
    bench.add_argument("--seq-len", type=_positive, default=128)
    bench.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="the model's dtype")
    bench.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    bench.add_argument("--backend", choices=["triton", "torch"], default=None,
                       help="the methods' backend (default: triton on CUDA, torch elsewhere)")  # fmt: skip
    bench.add_argument("--prompt-pass", choices=sorted(PROMPT_PASSES), default="both",
                       help="both: unshared, and shared where it applies; shared: refused where not")  # fmt: skip
    bench.add_argument("--repeat", type=int, default=5, help="timed training steps per method (>= 2)")
    bench.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    return parser


def run_bench(args: argparse.Namespace) -> list[dict]:
    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from prompt_ops.end_to_end import DTYPES, measure_method, measure_paths
    from prompt_ops.models.presets import load_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(args.model).to(device=device, dtype=DTYPES[args.dtype])
    rows = []
    with Progress(transient=True) as progress:
        task = progress.add_task("measuring", total=len(args.methods))
        for method in args.methods:
            progress.update(task, description=f"{method} on {args.model}")
            measure = (args.model, method, args.batch, args.seq_len, args.repeat, args.backend)
            shared = PROMPT_PASSES[args.prompt_pass]
            found = measure_paths(model, *measure) if shared is None else [measure_method(model, *measure, shared)]
            rows += [dataclasses.asdict(row) for row in found]
            progress.advance(task)
    table = Table(title=f"{args.model}: B={args.batch}, L={args.seq_len}, {args.dtype} on {device}")
    columns = ("method", "prompt pass", "trainable", "step ms (p20-p80)", "tokens/s", "activations MB", "peak MB",
               "prefill ms", "decode ms/token", "step, prefill vs unshared")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in rows:
        table.add_row(
            r["method"], "shared" if r["shared_prompt"] else "unshared", f"{r['trainable_params']:,d}",
            f"{r['step_ms']:.1f} ({r['step_p20_ms']:.1f}-{r['step_p80_ms']:.1f})", f"{r['tokens_per_s']:.0f}",
            f"{r['activation_mb']:.1f}", "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.1f}",
            f"{r['prefill_ms']:.1f}", "-" if r["decode_ms_per_token"] is None else f"{r['decode_ms_per_token']:.2f}",
            _versus_unshared(r, rows),
        )  # fmt: skip
    Console().print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def _versus_unshared(row: dict, rows: list[dict]) -> str:
    """A shared row's step and prefill time over its method's unshared row's, ``"-"`` for any other row."""
    base = next((r for r in rows if r["method"] == row["method"] and not r["shared_prompt"]), None)
    if not row["shared_prompt"] or base is None:
        return "-"
    return f"{row['step_ms'] / base['step_ms']:.2f}x, {row['prefill_ms'] / base['prefill_ms']:.2f}x"


def _check_bench_args(args: argparse.Namespace) -> None:
    """What argparse cannot check alone: the device exists and ``--out`` can be a file."""
    import torch

    try:
        device = torch.device(args.device) if args.device is not None else None
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda, cuda:N, ...; got {args.device!r}") from None
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    if args.out is not None and (args.out.is_dir() or any(p.exists() and not p.is_dir() for p in args.out.parents)):
        raise ValueError(f"--out {args.out}: must be a file path whose folders are folders")


def main(argv: list[str] | None = None) -> int:
    """Run the command; a bad argument or input prints ``prompt-ops <command>: <why>`` and returns 2."""
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        if args.repeat < 2:
            print("prompt-ops bench: --repeat must be >= 2", file=sys.stderr)
            return 2
        try:
            _check_bench_args(args)
            run_bench(args)
        except (ValueError, TypeError) as err:
            print(f"prompt-ops bench: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
