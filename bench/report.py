"""Tables and plots from a bench payload (``bench/results/ops.json``): README's section, the full markdown, PNGs.

Everything here is a pure function of the payload, so README's numbers are exactly the bench's (a test checks it).
"""

from __future__ import annotations

from pathlib import Path

PLOTS = {
    "bytes": "ops_bytes_vs_batch.png",
    "cpu": "ops_cpu_ms_vs_batch.png",
    "hidden": "ops_h100_projection_vs_hidden.png",
    "end_to_end": "end_to_end.png",
}
COUNTED = ("naive", "torch", "triton")
TIMED = ("naive", "compiled", "torch")


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pick(rows: list[dict], **where) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def _one(rows: list[dict], **where) -> dict | None:
    found = _pick(rows, **where)
    return found[0] if found else None


def reference_rows(payload: dict) -> list[dict]:
    """The op-level rows at the reference shape (README's table and the printed summary)."""
    ref = payload["reference_shape"]
    return [r for r in payload["rows"] if (r["batch"], r["seq_len"], r["hidden"]) ==
            (ref["batch"], ref["seq_len"], ref["hidden"])]  # fmt: skip


def _conditions(payload: dict) -> str:
    env, ref = payload["environment"], payload["reference_shape"]
    where = (
        f"{env['cpu']} (no GPU; Triton kernels run in the interpreter to be counted, never timed)"
        if env.get("device", "cpu") == "cpu"
        else f"{env['device']} (kernels compiled and timed with do_bench), host {env['cpu']}"
    )
    return (
        f"Device: {where}, torch "
        f"{env['torch']}, triton {env['triton']}, commit {env['commit']}, {env['date']}. fp32 tables and parameters, "
        f"int64 masks, eval (no dropout). Reference shape: B={ref['batch']}, L={ref['seq_len']}, d={ref['hidden']}, "
        f"m={ref['num_prompt']}, L_max={ref['max_length']}; ranks {payload['ranks']} (LAMP: l={ref['lamp_tokens']} "
        f"pooled by {ref['pool']}; LPT: n={ref['lpt_tokens']} NPG rows, its rank is the generator's h)."
    )


_PROVIDERS_TEXT = (
    "Providers: *naive* is eager PyTorch written as the official code writes it; *compiled* is `torch.compile` of "
    "naive (inductor, CPU); *torch* is our eager backend; *triton* is our fused kernels. Launches and MB are exact "
    "counts (eager aten ops with their bytes; distinct addresses the Triton kernels touch); *compiled* is timed, "
    "not counted. *Ideal* reads every input once and writes every output once. H100 columns are a **projection** "
    "(max(bytes / 3.35 TB/s, flops / 67 TFLOP/s) + 4 us per launch), not a measurement. CPU columns are real "
    "wall-clock medians. *full* is forward plus backward. A provider whose outputs or gradients differ from the "
    "reference is marked and not timed. DePT and EPT run the default batch-invariant positions on left-padded "
    "masks (row b has b % 4 leading pads, its starts made beforehand): the fused and torch paths take per-row "
    "offset rows, and *naive* gathers them per token, where the official code, which numbers padded columns, "
    "repeats `A @ B` over the batch (about half the naive launches)."
)


def render_readme(payload: dict) -> str:
    """README's benchmark section: the reference shape, end to end, folding, compile stats, plots."""
    at_ref = reference_rows(payload)
    lines = [
        _conditions(payload),
        "",
        _PROVIDERS_TEXT,
        "",
        "| op | mode | launches naive / torch / triton | MB naive / torch / triton / ideal | triton / ideal "
        "| H100 us naive / triton (proj.) | proj. speedup | CPU ms naive / compiled / torch | correct |",
        "|---|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for op in dict.fromkeys(r["op"] for r in at_ref):
        for mode in ("forward", "backward", "full"):
            by = {p: _one(at_ref, op=op, mode=mode, provider=p) for p in ("naive", "compiled", "torch", "triton")}
            if by["naive"] is None or by["triton"] is None:
                continue
            naive, triton = by["naive"], by["triton"]
            launches = " / ".join(str(by[p]["launches"]) if by[p] else "-" for p in COUNTED)
            moved = (
                " / ".join(_mb(by[p]["bytes"]) if by[p] else "-" for p in COUNTED) + f" / {_mb(naive['ideal_bytes'])}"
            )
            ratio = "-" if triton["bytes"] is None else f"{triton['bytes'] / triton['ideal_bytes']:.2f}"
            speedup = "-" if triton["h100_us"] is None else f"{naive['h100_us'] / triton['h100_us']:.2f}x"
            cpu = " / ".join(_ms(by[p]["cpu_ms"]) if by[p] else "-" for p in TIMED)
            correct = "yes" if all(by[p]["correct"] is not False for p in by if by[p]) else "**NO**"
            lines.append(
                f"| {op} | {mode} | {launches} | {moved} | {ratio} | {naive['h100_us']:.1f} / "
                f"{_ms(triton['h100_us'])} | {speedup} | {cpu} | {correct} |"
            )
    lines += [
        "",
        f"Sweeps over batch, length and hidden size (d = 768, 1024, 4096) are in `bench/results/ops.md` and "
        f"`ops.csv`, and plotted: ![bytes vs batch](bench/results/{PLOTS['bytes']}) "
        f"![CPU time vs batch](bench/results/{PLOTS['cpu']}) ![H100 projection vs hidden size](bench/results/"
        f"{PLOTS['hidden']})",
    ]
    lines += render_end_to_end(payload.get("end_to_end", []))
    lines += render_shared_prompt_sweep(payload.get("shared_prompt_sweep", []))
    lines += render_mixed(payload.get("mixed", []), payload.get("mixed_setup", {}))
    lines += render_end_to_end_mixed(payload.get("end_to_end_mixed", []))
    lines += _folding_table(payload.get("folding", []))
    lines += _compile_table(payload.get("compile", []))
    return "\n".join(lines) + "\n"


def render_full(payload: dict) -> str:
    """``ops.md``: the conditions and every op-level row."""
    lines = [
        _conditions(payload),
        "",
        _PROVIDERS_TEXT,
        "",
        "| op | provider | mode | B | L | d | launches | MB | ideal MB | H100 us (proj.) | CPU ms (p20-p80) | correct "
        "| note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---|",
    ]
    for r in payload["rows"]:
        cpu = "-" if r["cpu_ms"] is None else f"{r['cpu_ms']:.2f} ({r['cpu_p20_ms']:.2f}-{r['cpu_p80_ms']:.2f})"
        correct = {True: "yes", False: "**NO**", None: "-"}[r["correct"]]
        lines.append(
            f"| {r['op']} | {r['provider']} | {r['mode']} | {r['batch']} | {r['seq_len']} | {r['hidden']} "
            f"| {'-' if r['launches'] is None else r['launches']} | {_mb(r['bytes'])} | {_mb(r['ideal_bytes'])} "
            f"| {_ms(r['h100_us'])} | {cpu} | {correct} | {r['note']} |"
        )
    lines += render_end_to_end(payload.get("end_to_end", []))
    lines += render_shared_prompt_sweep(payload.get("shared_prompt_sweep", []))
    lines += render_mixed(payload.get("mixed", []), payload.get("mixed_setup", {}))
    lines += render_end_to_end_mixed(payload.get("end_to_end_mixed", []))
    return "\n".join(lines) + "\n"


def decode_cells(row: dict) -> tuple[str, str]:
    """The decode ms/token with the KV cache and, for LPT on a causal LM, without it; ``"-"`` where not measured."""
    cached, recompute = row["decode_ms_per_token"], row["decode_recompute_ms_per_token"]
    return ("-" if cached is None else f"{cached:.2f}"), ("-" if recompute is None else f"{recompute:.2f}")


def unshared(rows: list[dict]) -> list[dict]:
    """The rows on the unshared prompt path (rows written before the shared prompt pass have no such field)."""
    return [r for r in rows if not r.get("shared_prompt", False)]


PAIR_KEYS = ("model", "method", "device", "dtype", "backend", "batch", "seq_len", "prompt_rows")


def shared_pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """``(unshared, shared)`` rows of the same measurement (:data:`PAIR_KEYS`), in the shared rows' order."""
    pairs = []
    for shared in rows:
        if shared.get("shared_prompt", False):
            match = _one(unshared(rows), **{k: shared[k] for k in PAIR_KEYS})
            if match is not None:
                pairs.append((match, shared))
    return pairs


def _ratio(shared: float, base: float) -> str:
    return f"{shared / base:.2f}x"


def _pairs_table(pairs: list[tuple[dict, dict]]) -> list[str]:
    lines = [
        "| model | method | B | m | L | step ms unshared / shared | step shared / unshared | prefill ms unshared / "
        "shared | prefill shared / unshared | L / (m + L) | activations MB unshared / shared | activations shared / "
        "unshared |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for base, shared in pairs:
        rows, length = base["prompt_rows"], base["seq_len"]
        lines.append(
            f"| {base['model']} | {base['method']} | {base['batch']} | {rows} | {length} "
            f"| {base['step_ms']:.0f} / {shared['step_ms']:.0f} | {_ratio(shared['step_ms'], base['step_ms'])} "
            f"| {base['prefill_ms']:.1f} / {shared['prefill_ms']:.1f} "
            f"| {_ratio(shared['prefill_ms'], base['prefill_ms'])} | {length / (rows + length):.2f} "
            f"| {base['activation_mb']:.1f} / {shared['activation_mb']:.1f} "
            f"| {_ratio(shared['activation_mb'], base['activation_mb'])} |"
        )
    return lines


_SHARED_TEXT = (
    "*Shared* runs the shared prompt pass (`attach(..., shared_prompt=True)`): the prompt rows once per call at "
    "batch 1, their keys and values expanded to the batch as views, the input tokens against them; *unshared* runs "
    "the model on all `B * (m + L)` rows. Both compute the same outputs and gradients. Forced on, the pass also "
    "runs where the base model's dropout is active (GPT-2 in training), the prompt rows then sharing one dropout "
    "mask. Prefill is one eval forward as `generate`'s prefill runs it (the next token's logits only), the shared "
    "path starting from the prompt's cached keys and values. The gain stays below `L / (m + L)` because the input "
    "rows still attend over `m + L` keys, and per step the costs outside the model remain (the fused input op, "
    "AdamW) and the training step still returns logits for all `m + L` rows (the prompt's copied to every row)."
)


def render_shared_prompt(rows: list[dict]) -> list[str]:
    """The shared vs unshared prompt pass of each method measured both ways; nothing when none was."""
    pairs = shared_pairs(rows)
    if not pairs:
        return []
    return ["", f"Shared vs unshared prompt pass, end to end. {_SHARED_TEXT}", "", *_pairs_table(pairs)]


def render_shared_prompt_sweep(rows: list[dict]) -> list[str]:
    """The sweep of :func:`prompt_ops.end_to_end.sweep_shared_prompt`; nothing without rows."""
    pairs = shared_pairs(rows)
    if not pairs:
        return []
    return [
        "",
        "Shared vs unshared prompt pass, prompt tuning over batch size B and prompt length m "
        f"(`prompt_ops.end_to_end.sweep_shared_prompt`, no decoding). {_SHARED_TEXT}",
        "",
        *_pairs_table(pairs),
    ]


def render_end_to_end(rows: list[dict]) -> list[str]:
    """The end-to-end table of the unshared rows, then the shared vs unshared comparison where measured."""
    measured = rows
    rows = unshared(rows)
    if not rows:
        return []
    first = rows[0]
    lines = [
        "",
        f"End to end (`prompt_ops.end_to_end`, the engine of `prompt-ops bench`): one training step (forward, "
        f"backward, AdamW) and inference, B={first['batch']}, L={first['seq_len']}, {first['dtype']} on "
        f"{first['device']}, methods on the `{first['backend']}` backend at their papers' settings. Wall-clock "
        "medians (20/80 percentiles); *activations* are the bytes autograd saves for backward (weights excluded; "
        "the CPU has no peak-memory counter); prefill is one eval forward of the batch (on causal LMs the next "
        "token's logits only, as `generate`'s prefill); decode is per generated token with the KV cache (greedy; "
        "LPT's prompt is computed from the input at prefill and stays in the cache); *no cache* is LPT decoding "
        "without it, every step recomputing the sequence (as it decoded before).",
        "",
        "| model | method | trainable params | step ms (p20-p80) | tokens/s | activations MB | prefill ms "
        "| decode ms/token | no cache ms/token | step, activations vs prompt tuning |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = _one(rows, model=r["model"], method="prompt_tuning")
        versus = "-" if base is None else (
            f"{r['step_ms'] / base['step_ms']:.2f}x, {r['activation_mb'] / base['activation_mb']:.2f}x"
        )  # fmt: skip
        decode, recompute = decode_cells(r)
        lines.append(
            f"| {r['model']} | {r['method']} | {r['trainable_params']:,d} | {r['step_ms']:.0f} "
            f"({r['step_p20_ms']:.0f}-{r['step_p80_ms']:.0f}) | {r['tokens_per_s']:.0f} | {r['activation_mb']:.1f} "
            f"| {r['prefill_ms']:.1f} | {decode} | {recompute} | {versus} |"
        )
    lines += ["", f"![end to end](bench/results/{PLOTS['end_to_end']})"]
    return lines + render_shared_prompt(measured)


MIXED_PROVIDERS = ("peft_loop", "vllm_gather", "torch", "triton")
MIXED_TIMED = ("peft_loop", "vllm_gather", "torch")


def render_mixed(rows: list[dict], setup: dict) -> list[str]:
    """The mixed-adapter op table (``bench.mixed``, ``setup`` from :func:`bench.mixed.setup`): one line per (B,
    bank size, pattern); nothing without rows."""
    if not rows:
        return []
    first = rows[0]
    lines = [
        "",
        "Mixed-adapter batches, forward (`bench/mixed.py`): `mixed_dept_embed` on a bank of n prompt-tuning/DePT "
        "adapters, one adapter per row, against a *PEFT loop* (a Python loop over the batch's distinct adapters, "
        "each running the single-adapter DePT path as the official code writes it on its rows, scattered back) and "
        "a *vLLM gather* (zero-padded stacked prompt table, a per-token index built on the host at every call, an "
        "embedding gather over every column, a gather and a masked overwrite; vLLM had no offsets, so DePT's are "
        "added the same way: `Q = s * bmm(A, B)` for the bank, a host-built index, a gather and a masked add; on a "
        "GPU its host indices are also 3 host-to-device copies per call, not counted). "
        f"L={first['seq_len']}, d={first['hidden']}, fp32; adapter a has prompt length "
        f"{setup['prompt_lengths']}[a % 4] and rank {setup['ranks']}[a % 4] (m_max = "
        f"{first['num_slots']}), L_max = {setup['max_length']}, lora_alpha = {setup['lora_alpha']}; "
        "row b has b % 4 leading pads. Patterns (Punica's): *identical* one adapter, *uniform* the rows spread "
        f"evenly over n adapters, *skewed* a Zipf draw (exponent {setup['zipf_exponent']}, seed 0), "
        "*distinct* every row its own adapter; *n (used)* is the bank's size and the adapters the batch uses. "
        "Launches and MB are exact counts, *ideal* reads what the used adapters need once (no padding) and writes "
        "the output once; triton is the forward launch, counted in the interpreter at "
        f"{setup['triton_counted']} ('-' elsewhere). H100 columns are a **projection**, CPU columns real "
        "wall-clock medians timed in alternating rounds.",
        "",
        "| B | pattern | n (used) | launches PEFT loop / vLLM / torch / triton | MB PEFT loop / vLLM / torch / "
        "triton / ideal | triton / ideal | H100 us PEFT loop / vLLM / torch / triton (proj.) | CPU ms PEFT loop / "
        "vLLM / torch | correct |",
        "|---:|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    keys = dict.fromkeys((r["batch"], r["adapters"], r["pattern"]) for r in rows)
    for batch, adapters, pattern in keys:
        by = {p: _one(rows, batch=batch, adapters=adapters, pattern=pattern, provider=p) for p in MIXED_PROVIDERS}
        some = next(r for r in by.values() if r is not None)
        launches = " / ".join("-" if by[p] is None or by[p]["launches"] is None else str(by[p]["launches"])
                              for p in MIXED_PROVIDERS)  # fmt: skip
        moved = " / ".join(_mb(by[p]["bytes"]) if by[p] else "-" for p in MIXED_PROVIDERS)
        fused = by["triton"]
        ratio = "-" if fused is None or fused["bytes"] is None else f"{fused['bytes'] / fused['ideal_bytes']:.2f}"
        h100 = " / ".join(f"{by[p]['h100_us']:.1f}" if by[p] and by[p]["h100_us"] is not None else "-"
                          for p in MIXED_PROVIDERS)  # fmt: skip
        cpu = " / ".join(_ms(by[p]["cpu_ms"]) if by[p] else "-" for p in MIXED_TIMED)
        correct = "yes" if all(r["correct"] is not False for r in by.values() if r) else "**NO**"
        lines.append(
            f"| {batch} | {pattern} | {adapters} ({some['present']}) | {launches} | {moved} / "
            f"{_mb(some['ideal_bytes'])} | {ratio} | {h100} | {cpu} | {correct} |"
        )
    return lines


MIXED_PATHS = {"mixed": "mixed (one bank)", "one_adapter": "one adapter", "loop": "loop per adapter"}


def render_end_to_end_mixed(rows: list[dict]) -> list[str]:
    """The end-to-end mixed-adapter table (:func:`prompt_ops.end_to_end_mixed.measure_mixed_adapters`): one line
    per path, the prefill and decode times also as a ratio to the one-adapter path's; nothing without rows."""
    if not rows:
        return []
    first, mixed, one = rows[0], _one(rows, path="mixed"), _one(rows, path="one_adapter")
    lines = [
        "",
        f"Mixed-adapter batches end to end (`prompt_ops.end_to_end_mixed`) on {first['model']}: B={first['batch']}, "
        f"L={first['seq_len']}, {first['dtype']} on {first['device']}, the `{first['backend']}` backend, eval. "
        f"*mixed*: one `attach_many` model, one call for the batch, row b on adapter b % n of "
        f"{mixed['adapters'] if mixed else '-'} (the bank zero-pads prompts and ranks to the "
        "largest); *one adapter*: the same batch through "
        f"{one['adapters'] if one else '-'} attached alone (`attach`); *loop*: each adapter attached alone "
        "(`attach`, the bank's weights) runs its own rows, one call per adapter in sequence, time summed. "
        "Prefill is one eval forward with `logits_to_keep=1` (input tokens/s over its median); decode is greedy ms "
        f"per generated token with the KV cache, (t(1 + {first['decode_tokens']}) - t(1)) / "
        f"{first['decode_tokens']} of medians. The paths run in alternating rounds; *model calls* are the base "
        "model's forward calls in one prefill, counted; *prompt pass kept*: each adapter's prompt pass computed "
        "once and reused, so only the input tokens run. Goal (issue 14): mixed at most 1.1x one adapter.",
        "",
        "| path | adapters in batch | model calls / prefill | prompt pass kept | prefill ms (p20-p80) "
        "| prefill tokens/s | prefill vs one adapter | decode ms/token "
        "| decode vs one adapter | greedy tokens = mixed |",
        "|---|---:|---:|:---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        prefill = "-" if one is None else _ratio(r["prefill_ms"], one["prefill_ms"])
        decode = "-" if one is None else _ratio(r["decode_ms_per_token"], one["decode_ms_per_token"])
        same = {True: "yes", False: "**NO**", None: "-"}[r["same_tokens_as_mixed"]]
        lines.append(
            f"| {MIXED_PATHS.get(r['path'], r['path'])} | {r['distinct_adapters']} | {r['model_calls']} "
            f"| {'yes' if r['shared_prompt'] else 'no'} | {r['prefill_ms']:.1f} ({r['prefill_p20_ms']:.1f}-"
            f"{r['prefill_p80_ms']:.1f}) | {r['prefill_tokens_per_s']:.0f} | {prefill} "
            f"| {r['decode_ms_per_token']:.2f} | {decode} | {same} |"
        )
    return lines


def _folding_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "ADePT inference, eval mode: the FFN run per token (`adept_embed`) vs folded into the table once "
        "(`ADePT.fold()`, then `prompt_embed`). Fused kernels counted, the `torch` backend timed on the CPU.",
        "",
        "| B | unfolded launches | folded launches | unfolded MB | folded MB | unfolded H100 us (proj.) "
        "| folded H100 us (proj.) | CPU unfolded ms | CPU folded ms | outputs match |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['unfolded_launches']} | {r['folded_launches']} | {_mb(r['unfolded_bytes'])} "
            f"| {_mb(r['folded_bytes'])} | {r['unfolded_h100_us']:.1f} | {r['folded_h100_us']:.1f} "
            f"| {r['cpu_unfolded_ms']:.2f} | {r['cpu_folded_ms']:.2f} | {'yes' if r['outputs_match'] else '**NO**'} |"
        )
    return lines


def _compile_table(stats: list[dict]) -> list[str]:
    if not stats:
        return []
    lines = [
        "",
        "sm_90 compile stats of the shipped kernel configs (`python -m prompt_ops.kernels.compile_check`, no GPU "
        "needed):",
        "",
        "| kernel config | registers / thread | spill bytes | shared memory bytes |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {s['label']} | {s['registers']} | {s['spill_bytes']} | {s['shared_bytes']} |" for s in stats]
    return lines


def write_plots(payload: dict, folder: Path) -> list[Path]:
    """The PNGs README links to: bytes and CPU time vs batch, the H100 projection vs hidden size (op level), and
    the end-to-end step time and activations per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = payload["reference_shape"]
    rows = payload["rows"]
    ops = list(dict.fromkeys(r["op"] for r in rows))
    written = []

    def sweep(mode: str, providers, value, ylabel: str, name: str, x="batch", fixed=None, band=None, ideal=False):
        fixed = fixed or {"seq_len": ref["seq_len"], "hidden": ref["hidden"]}
        figure, axes = plt.subplots(1, len(ops), figsize=(3.2 * len(ops), 3.0), squeeze=False)
        for axis, op in zip(axes[0], ops, strict=True):
            for provider in providers:
                points = sorted(
                    (r[x], value(r)) for r in _pick(rows, op=op, mode=mode, provider=provider, **fixed)
                    if value(r) is not None
                )  # fmt: skip
                if points:
                    axis.plot(*zip(*points, strict=True), marker="o", label=provider)
                spread = sorted(
                    (r[x], *band(r)) for r in _pick(rows, op=op, mode=mode, provider=provider, **fixed)
                    if band is not None and value(r) is not None
                )  # fmt: skip
                if spread:
                    xs, low, high = zip(*spread, strict=True)
                    axis.fill_between(xs, low, high, alpha=0.25)  # the 20-80 percentile band
            if ideal:
                floor = sorted((r[x], r["ideal_bytes"] / 1e6) for r in _pick(rows, op=op, mode=mode, provider="naive",
                                                                               **fixed))  # fmt: skip
                if floor:
                    axis.plot(*zip(*floor, strict=True), linestyle="--", color="gray", label="ideal")
            axis.set_title(f"{op} {mode}", fontsize=9)
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel(x)
        axes[0][0].set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=8)
        figure.tight_layout()
        path = folder / PLOTS[name]
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)

    sweep("forward", COUNTED, lambda r: None if r["bytes"] is None else r["bytes"] / 1e6, "MB moved (counted)",
          "bytes", ideal=True)  # fmt: skip
    sweep("full", TIMED, lambda r: r["cpu_ms"], "CPU ms fwd+bwd, p20-p80", "cpu",
          band=lambda r: (r["cpu_p20_ms"], r["cpu_p80_ms"]))  # fmt: skip
    sweep("full", COUNTED, lambda r: r["h100_us"], "H100 us (projection)", "hidden", x="hidden",
          fixed={"batch": ref["batch"], "seq_len": ref["seq_len"]})  # fmt: skip

    end_to_end = unshared(payload.get("end_to_end", []))
    if end_to_end:
        models = list(dict.fromkeys(r["model"] for r in end_to_end))
        figure, axes = plt.subplots(2, len(models), figsize=(4.0 * len(models), 5.5), squeeze=False)
        for column, model in enumerate(models):
            mine = _pick(end_to_end, model=model)
            names = [r["method"] for r in mine]
            for row, (key, label) in enumerate((("step_ms", "train step ms"), ("activation_mb", "activations MB"))):
                axis = axes[row][column]
                axis.bar(names, [r[key] for r in mine])
                axis.set_title(f"{model}: {label}", fontsize=9)
                axis.tick_params(axis="x", labelrotation=45, labelsize=8)
        figure.tight_layout()
        path = folder / PLOTS["end_to_end"]
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written
