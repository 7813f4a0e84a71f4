"""The bench on small shapes (the full run is `make bench`): every provider and mode, the correctness gate, the
regression guard on the fused kernels' launch and byte budgets, the report and plots, end to end and the CLI."""

import dataclasses
import json
import re

import pytest
import torch

from bench import measure as bench_measure
from bench.measure import BUDGETS, FAMILIES, EmbedShape, measure_case, measure_folding
from bench.report import (
    PLOTS,
    render_end_to_end,
    render_full,
    render_readme,
    render_shared_prompt_sweep,
    write_plots,
)
from bench.run import README_END, README_START, update_readme
from prompt_ops import end_to_end
from prompt_ops.cli import main as cli_main
from prompt_ops.end_to_end import EndToEndRow, measure_method, measure_paths, sweep_shared_prompt
from prompt_ops.profiling.memory import saved_activations
from tests.conftest import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="the CPU bench counts kernels under the interpreter")

SMALL = EmbedShape(
    batch=2, seq_len=24, num_prompt=5, hidden=64, rank=6, max_length=32, vocab=500, lamp_tokens=12, lpt_tokens=3
)  # 48 tokens make one ADePT weight split, so no partial-sum launch follows
COUNTED = ("naive", "torch", "triton")


def rows_by(rows):
    return {(r.provider, r.mode): r for r in rows}


@pytest.mark.parametrize("op", sorted(FAMILIES))
def test_every_provider_and_mode_within_budget(op):
    """The regression guard: the fused kernels' launches and unique bytes stay within the family's budget, and
    every provider matches the reference; naive and torch are counted and timed, triton counted only."""
    rows = rows_by(measure_case(op, SMALL, providers=COUNTED, repeat=2))
    budget = BUDGETS[op]
    assert all(row.correct for row in rows.values())
    forward, backward, full = (rows["triton", mode] for mode in ("forward", "backward", "full"))
    assert forward.launches == budget.forward_launches and backward.launches == budget.backward_launches
    assert full.launches == forward.launches + backward.launches and full.bytes == forward.bytes + backward.bytes
    if budget.forward_bytes_over_ideal is not None:
        assert forward.bytes <= budget.forward_bytes_over_ideal * forward.ideal_bytes
    else:
        assert forward.ideal_bytes < forward.bytes < rows["naive", "forward"].bytes
    assert rows["naive", "forward"].launches >= 3
    for provider in ("naive", "torch"):
        assert all(
            rows[provider, mode].cpu_ms > 0 and rows[provider, mode].launches > 0 for mode in bench_measure.MODES
        )
    assert all(rows["triton", mode].cpu_ms is None and rows["triton", mode].h100_us > 0 for mode in bench_measure.MODES)


def test_compiled_provider_is_timed_not_counted():
    rows = rows_by(measure_case("dept_embed", SMALL, providers=("compiled",), repeat=2))
    assert all(row.correct and row.launches is None and row.cpu_ms > 0 for row in rows.values())
    assert "not counted" in rows["compiled", "forward"].note


def test_a_wrong_provider_is_reported_and_not_timed(monkeypatch):
    family = FAMILIES["dept_embed"]

    def wrong_ours(x, backend):
        out, mask = family.ours(x, backend)
        return out * 1.01, mask

    def wrong_fused(x):
        out, mask = family.fused_forward(x)
        return out + 1.0, mask

    patched = dataclasses.replace(family, ours=wrong_ours, fused_forward=wrong_fused)
    monkeypatch.setitem(FAMILIES, "dept_embed", patched)
    rows = rows_by(measure_case("dept_embed", SMALL, providers=("torch", "triton"), repeat=2))
    assert rows["torch", "forward"].correct is False and rows["torch", "forward"].cpu_ms is None
    assert rows["triton", "forward"].correct is False and rows["triton", "backward"].correct is True


def test_folding_row():
    row = measure_folding(dataclasses.replace(SMALL, rank=19), repeat=2)
    assert row.outputs_match
    assert row.unfolded_launches == row.folded_launches == 1
    assert row.folded_bytes < row.unfolded_bytes  # no FFN weights to read


def tiny(family: str = "bert"):
    import transformers

    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=4, n_head=2)
        return transformers.GPT2LMHeadModel(config).eval()
    if family == "llama":
        config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
        return transformers.LlamaForCausalLM(config).eval()
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=160)  # fmt: skip
    return transformers.BertModel(config).eval()


def end_to_end_rows():
    model = tiny()
    return [measure_method(model, "tiny-bert", method, 2, 16, repeat=2) for method in ("prompt_tuning", "lpt")]


def test_end_to_end_rows():
    """LPT keeps fewer activations than prompt tuning: nothing below layer k is saved, and 5 rows instead of 100.
    The model is left as it was (LPT's hooks removed)."""
    model = tiny("gpt2")
    before = model(input_ids=torch.arange(10)[None]).logits
    rows = {m: measure_method(model, "tiny-gpt2", m, 2, 16, repeat=2) for m in ("prompt_tuning", "dept", "lpt")}
    assert torch.equal(model(input_ids=torch.arange(10)[None]).logits, before)
    assert rows["prompt_tuning"].trainable_params == 100 * 32
    assert [(r.shared_prompt, r.prompt_rows) for r in rows.values()] == [(False, 100), (False, 60), (False, 0)]
    assert rows["lpt"].trainable_params == 32 * 128 + 128 + 128 * 5 * 32 + 5 * 32
    assert 0 < rows["lpt"].activation_mb < rows["prompt_tuning"].activation_mb
    assert all(r.step_ms > 0 and r.prefill_ms > 0 and r.decode_ms_per_token > 0 for r in rows.values())
    lpt = rows["lpt"]  # decodes with the KV cache; the rows also time it without (recomputing the sequence)
    assert lpt.decode_recompute_ms_per_token > 0 and rows["dept"].decode_recompute_ms_per_token is None
    cells = f"| {lpt.decode_ms_per_token:.2f} | {lpt.decode_recompute_ms_per_token:.2f} |"
    assert cells in "\n".join(render_end_to_end([dataclasses.asdict(lpt)]))
    encoder = end_to_end_rows()[0]
    assert encoder.decode_ms_per_token is None and encoder.peak_memory_mb is None
    assert encoder.decode_recompute_ms_per_token is None
    with pytest.raises(ValueError, match="method must be one of"):
        measure_method(model, "tiny-gpt2", "lora", 2, 16)
    with pytest.raises(ValueError, match="batch must be an int >= 1"):
        measure_method(model, "tiny-gpt2", "dept", 0, 16)


def test_measure_paths_adds_the_shared_row_where_the_pass_applies(monkeypatch):
    """DePT on a causal GPT-2: the unshared row, then the shared one (same trainable parameters), their step and
    prefill timed in alternating rounds; LPT (its prompt depends on the input) and an encoder get the unshared row
    only. The model is left as it was."""
    model = tiny("gpt2")
    before = model(input_ids=torch.arange(10)[None]).logits
    timed, real = [], end_to_end.interleaved_time

    def interleaved(fns, repeat, warmup):
        timed.append(len(fns))
        return real(fns, repeat, warmup)

    monkeypatch.setattr(end_to_end, "interleaved_time", interleaved)
    unshared, shared = measure_paths(model, "tiny-gpt2", "dept", 1, 4, repeat=2)
    assert timed == [2, 2]  # the training step, then the prefill: both paths in each round
    assert torch.equal(model(input_ids=torch.arange(10)[None]).logits, before)
    assert (unshared.shared_prompt, shared.shared_prompt) == (False, True)
    assert unshared.trainable_params == shared.trainable_params and shared.prompt_rows == 60
    assert shared.step_ms > 0 and shared.prefill_ms > 0 and shared.decode_ms_per_token > 0
    (lpt,) = measure_paths(tiny("bert"), "tiny-bert", "lpt", 1, 4, repeat=2)
    assert lpt.shared_prompt is False


def test_sweep_shared_prompt_rows():
    """Prompt tuning on LLaMA at each (m, B), unshared then shared, no decoding. The shared pass runs the prompt at
    batch 1, so at B = 2 autograd keeps fewer activations than the unshared path: the rows ran the path they say."""
    rows = sweep_shared_prompt(tiny("llama"), "tiny-llama", batches=(1, 2), num_tokens=(20,), seq_len=4, repeat=2)
    assert [(r.prompt_rows, r.batch, r.shared_prompt) for r in rows] == [
        (20, 1, False), (20, 1, True), (20, 2, False), (20, 2, True)
    ]  # fmt: skip
    assert all(r.method == "prompt_tuning" and r.trainable_params == 20 * 32 for r in rows)
    assert all(r.decode_ms_per_token is None and r.step_ms > 0 and r.prefill_ms > 0 for r in rows)
    assert rows[3].activation_mb < rows[2].activation_mb


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: measure_method(tiny(), "x", "dept", 1, 4, shared_prompt=True), ValueError, "BertModel is not a"),
        (lambda: measure_method(tiny("gpt2"), "x", "lpt", 1, 4, shared_prompt=True), ValueError, "depends on the"),
        (lambda: measure_method(tiny("gpt2"), "x", "dept", 1, 4, shared_prompt=None), TypeError, "True or False"),
        (lambda: sweep_shared_prompt(tiny(), "x"), ValueError, "sweep needs a model the shared pass covers"),
        (lambda: sweep_shared_prompt(tiny("gpt2"), "x", batches=[1]), TypeError, "batches must be a non-empty"),
        (lambda: sweep_shared_prompt(tiny("gpt2"), "x", num_tokens=(0,)), ValueError, "num_tokens must be an int"),
    ],
)
def test_shared_prompt_refusals(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def synthetic_row(method: str, shared: bool, step_ms: float, prefill_ms: float, activation_mb: float, batch: int = 8,
                  prompt_rows: int = 100) -> dict:  # fmt: skip
    return dataclasses.asdict(
        EndToEndRow(
            model="gpt2",
            method=method,
            device="cpu",
            dtype="float32",
            backend="torch",
            batch=batch,
            seq_len=128,
            shared_prompt=shared,
            prompt_rows=prompt_rows,
            trainable_params=25600,
            step_ms=step_ms,
            step_p20_ms=step_ms,
            step_p80_ms=step_ms,
            tokens_per_s=1.0,
            activation_mb=activation_mb,
            peak_memory_mb=None,
            prefill_ms=prefill_ms,
            decode_ms_per_token=1.0,
            decode_recompute_ms_per_token=None,
        )  # fmt: skip
    )


def test_report_shows_both_prompt_passes_and_their_ratio():
    """The main table keeps the unshared rows (compared with unshared prompt tuning); the shared rows go to their
    own table beside their unshared row, with the ratios and L / (m + L) (128 / 228 = 0.56)."""
    rows = [synthetic_row("prompt_tuning", False, 200, 40, 50), synthetic_row("prompt_tuning", True, 130, 30, 20),
            synthetic_row("lpt", False, 100, 20, 10, prompt_rows=0)]  # fmt: skip
    lines = render_end_to_end(rows)
    main = [line for line in lines if line.startswith("| gpt2 | prompt_tuning | 25,600 |")]
    assert main == ["| gpt2 | prompt_tuning | 25,600 | 200 (200-200) | 1 | 50.0 | 40.0 | 1.00 | - | 1.00x, 1.00x |"]
    assert "| gpt2 | lpt | 25,600 | 100 (100-100) | 1 | 10.0 | 20.0 | 1.00 | - | 0.50x, 0.20x |" in lines
    assert "| gpt2 | prompt_tuning | 8 | 100 | 128 | 200 / 130 | 0.65x | 40.0 / 30.0 | 0.75x | 0.56 | 50.0 / 20.0 " \
        "| 0.40x |" in lines  # fmt: skip
    assert not any("Shared vs unshared" in line for line in render_end_to_end(rows[:1] + rows[2:]))
    sweep = [synthetic_row("prompt_tuning", shared, 10 + shared, 5, 1, batch=32, prompt_rows=20)
             for shared in (False, True)]  # fmt: skip
    rendered = render_shared_prompt_sweep(sweep)
    assert "over batch size B and prompt length m" in rendered[1]
    assert "| gpt2 | prompt_tuning | 32 | 20 | 128 | 10 / 11 | 1.10x | 5.0 / 5.0 | 1.00x | 0.86 | 1.0 / 1.0 " \
        "| 1.00x |" in rendered  # fmt: skip
    assert render_shared_prompt_sweep([]) == [] == render_shared_prompt_sweep(sweep[:1])


@pytest.mark.parametrize(
    "args, error, pattern",
    [
        ((None, "x", "dept"), TypeError, "model must be a Hugging Face PreTrainedModel"),
        ((torch.nn.Linear(2, 2), "x", "dept"), TypeError, "model must be a Hugging Face PreTrainedModel"),
        (("gpt2", 3, "dept"), TypeError, "model_name must be a str"),
        (
            ("gpt2", "x", "dept", 2, 1000),
            ValueError,
            r"seq_len = 1000, dept.s 60 prompt rows and 8 decoded tokens make 1068",
        ),
        (("gpt2", "x", "prompt_tuning", 2**40, 4), ValueError, r"batch = 1099511627776 and seq_len = 4 ask for"),
    ],
)
def test_measure_method_refuses_bad_input_before_touching_the_model(args, error, pattern):
    """The model's position table and the memory are checked up front (an IndexError or the allocator's error
    before), and the model keeps its requires_grad flags."""
    model = tiny("gpt2")
    args = (model, *args[1:]) if args[0] == "gpt2" else args
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(error, match=pattern):
        measure_method(*args)
    assert [p.requires_grad for p in model.parameters()] == flags


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--device", "tpu"], "--device must be cpu, cuda"),
        (["--out", "."], "--out .: must be a file path"),
        (["--model", "folder-without-weights"], "model folder folder-without-weights cannot be loaded"),
    ],
)
def test_cli_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch, argv, pattern):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder-without-weights").mkdir()
    (tmp_path / "folder-without-weights" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert cli_main(["bench", "--methods", "dept", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prompt-ops bench: ") and pattern in err and "Traceback" not in err


def test_saved_activations_counts_what_autograd_keeps():
    weight = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8)
    with saved_activations(exclude=[weight]) as saved:
        hidden = torch.relu(x @ weight)  # saves x (weight excluded) and relu's output
        with torch.no_grad():
            torch.relu(hidden @ weight)  # nothing saved without gradients
    assert saved.tensors == 2 and saved.bytes == 2 * 4 * 8 * 4


def test_cli_bench_on_a_local_folder(tmp_path, capsys, monkeypatch):
    """The rows come from the JSON output; the rendered title is checked with its line breaks folded, so neither the
    temporary path's length nor the console's width matters (rich wraps a title to the table's width)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "240")
    tiny("gpt2").save_pretrained(tmp_path / "tiny-folder")
    out = tmp_path / "rows.json"
    code = cli_main(["bench", "--model", "tiny-folder", "--methods", "dept,lpt", "--batch", "2",
                     "--seq-len", "12", "--repeat", "2", "--out", str(out)])  # fmt: skip
    assert code == 0
    rows = json.loads(out.read_text())
    assert [(r["method"], r["shared_prompt"]) for r in rows] == [("dept", False), ("dept", True), ("lpt", False)]
    assert all(r["decode_ms_per_token"] > 0 for r in rows)
    assert {(r["model"], r["batch"], r["seq_len"], r["dtype"], r["device"]) for r in rows} == {
        ("tiny-folder", 2, 12, "float32", "cpu")
    }
    printed = " ".join(capsys.readouterr().out.split())
    assert "tiny-folder: B=2, L=12, float32 on cpu" in printed  # the table's title
    versus = f"{rows[1]['step_ms'] / rows[0]['step_ms']:.2f}x, {rows[1]['prefill_ms'] / rows[0]['prefill_ms']:.2f}x"
    assert f"│ {versus} │" in printed  # the shared row's step and prefill vs the unshared row's
    assert cli_main(["bench", "--model", "tiny-folder", "--methods", "lpt", "--prompt-pass", "shared"]) == 2
    assert "prompt-ops bench: shared_prompt=True: LPT's prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["bench", "--methods", "dept,lora"])
    assert cli_main(["bench", "--model", str(tmp_path / "missing"), "--methods", "dept"]) == 2
    assert re.search(
        r"^prompt-ops bench: model must be a preset .* or a folder with a config.json",
        capsys.readouterr().err,
        re.MULTILINE,  # after the usage argparse printed for the call above
    )


def test_report_round_trip(tmp_path):
    rows = []
    for op in ("dept_embed", "lpt_insert"):
        for batch in (1, 2):
            shape = dataclasses.replace(SMALL, batch=batch)
            rows += [dataclasses.asdict(r) for r in measure_case(op, shape, providers=COUNTED, repeat=2)]
    reference = {k: v for k, v in dataclasses.asdict(dataclasses.replace(SMALL, batch=2)).items() if k != "rank"}
    payload = {
        "environment": {"cpu": "test", "torch": "t", "triton": "t", "commit": "abc", "date": "today"},
        "reference_shape": reference,
        "ranks": {"dept_embed": 6, "lpt_insert": 6},
        "rows": rows,
        "folding": [dataclasses.asdict(measure_folding(SMALL, repeat=2))],
        "end_to_end": [dataclasses.asdict(row) for row in end_to_end_rows()],
        "compile": [{"label": "k", "registers": 10, "spill_bytes": 0, "shared_bytes": 0}],
    }
    markdown = render_readme(payload)
    assert "| dept_embed | forward |" in markdown and "| lpt_insert | full |" in markdown
    assert "| k | 10 | 0 | 0 |" in markdown and "| tiny-bert | lpt |" in markdown
    assert render_full(payload).count("| dept_embed | triton |") == 6  # 3 modes x 2 batches
    assert {path.name for path in write_plots(payload, tmp_path)} == set(PLOTS.values())
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\noutro\n")
    update_readme(markdown, readme)
    assert readme.read_text() == f"intro\n{README_START}\n{markdown}{README_END}\noutro\n"
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        update_readme(markdown, readme)


def test_pytest_bench_runs_a_case_with_counts_in_extra_info(tmp_path):
    """``pytest bench/`` collects the op cases, gates them on the reference and records the counts. (Its own
    ``--basetemp``: a nested pytest would otherwise prune the shared temporary folders of this run.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"}  # benchmarks are off in xdist workers
    env.update({"PROMPT_OPS_BENCH_BATCH": "2", "PROMPT_OPS_BENCH_SEQ_LEN": "16", "PROMPT_OPS_BENCH_HIDDEN": "64"})
    report = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "bench/test_ops_bench.py", "-k",
         "test_op and lpt_insert and forward and (naive or triton)", "--benchmark-min-rounds=2",
         "--benchmark-max-time=0.01", f"--benchmark-json={report}", f"--basetemp={tmp_path / 'inner'}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 passed, 1 skipped" in result.stdout
    (bench,) = json.loads(report.read_text())["benchmarks"]
    assert bench["extra_info"]["triton_launches"] == BUDGETS["lpt_insert"].forward_launches
    assert bench["extra_info"]["launches"] >= 3 and bench["stats"]["median"] > 0
