"""LPT's generators (NPG, APPG and MPPG) and the insertion against ops/reference.py on both backends: outputs,
gradients, dropout, left and right padding, source lengths, ties of the max, custom-op checks and bad input."""

import pytest
import torch

import prompt_ops
from prompt_ops.kernels import lpt as kernels
from prompt_ops.ops import lpt as ops
from prompt_ops.ops import reference
from tests.helpers import assert_close, assert_grads_close, tolerances

BACKENDS = ["torch", "triton"]
MODES = ["naive", "pool", "max"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, L, d, h, n): batch 1 with one row, odd widths, h not a power of two, windows longer and shorter than 1 row.
SHAPES = [(1, 1, 8, 3, 1), (3, 9, 20, 6, 4), (2, 13, 37, 19, 5), (2, 5, 33, 16, 7)]
NAMES = ("w_down", "b_down", "w_up", "b_up")


def make(batch, seq_len, hidden_size, gen_rank, num_tokens, mode, dtype=torch.float32, device=None):
    width = num_tokens * hidden_size if mode == "naive" else hidden_size
    hidden = torch.randn(batch, seq_len, hidden_size, device=device).to(dtype)
    params = [
        torch.randn(hidden_size, gen_rank, device=device) / hidden_size**0.5,
        torch.randn(gen_rank, device=device),
        torch.randn(gen_rank, width, device=device) / gen_rank**0.5,
        torch.randn(width, device=device),
    ]
    mask = ragged_mask(batch, seq_len, device)
    index = torch.randint(0, seq_len, (batch,), device=device)
    return hidden, [p.requires_grad_(True) for p in params], mask, index


def ragged_mask(batch, seq_len, device=None):
    """Ragged lengths on every padding side: the last row right-padded by 2, the first left-padded by 1, a middle
    row (when there is one) padded by 1 on both sides."""
    mask = torch.ones(batch, seq_len, dtype=torch.long, device=device)
    if batch > 1 and seq_len > 2:
        mask[-1, seq_len - 2 :] = 0
        mask[0, :1] = 0
    if batch > 2 and seq_len > 3:
        mask[1, :1] = mask[1, -1:] = 0
    return mask


def check(out, hidden, params, mask, index, num_tokens, mode, dropout_scale=None, source_lengths=None):
    fresh = [p.detach().clone().requires_grad_(True) for p in params]
    expected = reference.lpt_prompt(hidden.float(), *fresh, num_tokens, index, mask, mode, dropout_scale,
                                    source_lengths)  # fmt: skip
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert_close(out, expected, torch.float32, dot=True)
    grad = torch.randn(out.shape, device=out.device)
    got, want = torch.autograd.grad(out, params, grad), torch.autograd.grad(expected, fresh, grad)
    assert_grads_close(got, want, NAMES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_generators_match_reference(backend, mode, shape, dtype):
    hidden, params, mask, index = make(*shape, mode, dtype)
    num_tokens = shape[4]
    out = prompt_ops.lpt_prompt(
        hidden, *params, num_tokens=num_tokens, index=index, attention_mask=mask, mode=mode, backend=backend
    )
    check(out, hidden, params, mask, index, num_tokens, mode)


@pytest.mark.parametrize("mode", MODES)
def test_realistic_shape(mode):
    """B=4, L=128, d=768, h=128, n=5 (the official scripts' generator)."""
    hidden, params, mask, index = make(4, 128, 768, 128, 5, mode)
    out = prompt_ops.lpt_prompt(hidden, *params, num_tokens=5, index=index, attention_mask=mask, mode=mode,
                                backend="triton")  # fmt: skip
    check(out, hidden, params, mask, index, 5, mode)


@pytest.mark.parametrize("mode", MODES)
def test_dropout_uses_one_mask(mode):
    hidden, params, mask, index = make(3, 9, 20, 6, 4, mode)
    kwargs = {"num_tokens": 4, "index": index, "attention_mask": mask, "mode": mode, "backend": "triton"}
    out = prompt_ops.lpt_prompt(hidden, *params, dropout_p=0.3, training=True, seed=11, **kwargs)
    again = prompt_ops.lpt_prompt(hidden, *params, dropout_p=0.3, training=True, seed=11, **kwargs)
    assert torch.equal(out, again)
    rows, width = (3, 80) if mode == "naive" else (12, 20)
    scale = kernels.dropout_multipliers(rows, width, 0.3, 11, hidden.device)
    check(out, hidden, params, mask, index, 4, mode, dropout_scale=scale)


@pytest.mark.parametrize("seq_len", [0, 3])
@pytest.mark.parametrize("max_pool", [False, True])
def test_window_sum_stays_inside_the_sample(seq_len, max_pool):
    """Windows that reach outside ``[0, L)`` (an empty sequence, a negative start, an end past L) read nothing
    there: the kernels mask rows by both ends of the window and by L (the autouse bounds checker fails on any
    out-of-bounds access). The public entries refuse such windows; this is the kernels' own safety. An empty
    max window keeps ``-inf`` and row -1, and its backward reads no row."""
    _, params, _, _ = make(2, 1, 8, 3, 2, "pool")
    w_down, b_down, w_up, b_up = (p.detach() for p in params)
    hidden = torch.randn(2, seq_len, 8)
    starts = torch.tensor([0, -4, 0, 1])
    ends = torch.tensor([1, 2, seq_len + 5, seq_len + 2])
    out = torch.empty(2, 2, 8)
    arg_rows = torch.empty(4, 3, dtype=torch.int64) if max_pool else None
    pre = kernels.lpt_generate_fwd(hidden, starts, ends, w_down, b_down, w_up, b_up, 0.0, 0, out, arg_rows)
    rows = [(0, max(0, min(1, seq_len))), (0, min(2, seq_len)), (0, seq_len), (min(1, seq_len), seq_len)]
    if max_pool:
        projected = hidden @ w_down + b_down
        empty = torch.full((3,), float("-inf"))
        expected = torch.stack([projected[i // 2, lo:hi].amax(0) if hi > lo else empty for i, (lo, hi) in
                                enumerate(rows)])  # fmt: skip
        assert ((arg_rows >= 0) | (pre == float("-inf"))).all() and (arg_rows < max(seq_len, 1)).all()
    else:
        sums = torch.stack([hidden[i // 2, lo:hi].sum(0) for i, (lo, hi) in enumerate(rows)])
        expected = (sums @ w_down) / (ends - starts)[:, None].float() + b_down
    assert_close(pre, expected, torch.float32, dot=True)
    grads = kernels.lpt_generate_bwd(torch.randn(2, 2, 8), hidden, starts, ends, pre, w_up, 0.0, 0, arg_rows)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("mode", MODES)
def test_no_gradient_reaches_the_hidden_states(mode):
    hidden, params, mask, index = make(2, 6, 16, 4, 3, mode)
    hidden.requires_grad_(True)
    for backend in BACKENDS:
        for entry in (prompt_ops.lpt_prompt, prompt_ops.lpt_insert):
            out = entry(hidden, *params, num_tokens=3, attention_mask=mask, mode=mode, backend=backend)
            (out[0] if isinstance(out, tuple) else out).sum().backward()
    assert hidden.grad is None


@pytest.mark.parametrize("mode", ["pool", "max"])
def test_gradcheck_fp64_torch_backend(mode):
    hidden, params, mask, _ = make(3, 7, 6, 3, 2, mode)
    hidden, params = hidden.double(), [p.detach().double().requires_grad_(True) for p in params]

    def fn(*p):
        return prompt_ops.lpt_prompt(hidden, *p, num_tokens=2, attention_mask=mask, mode=mode, backend="torch")

    assert torch.autograd.gradcheck(fn, tuple(params))


@pytest.mark.parametrize("mode", ["pool", "max"])
def test_opcheck_and_compile(mode):
    hidden, params, mask, _ = make(2, 6, 16, 4, 3, mode)
    starts, ends = ops.slot_windows(2, 6, 3, mode, None, mask)
    max_pool = mode == "max"
    torch.library.opcheck(ops.lpt_prompt_fwd_op, (hidden, *params, starts, ends, 3, 0.2, 3, max_pool))
    torch.library.opcheck(ops.lpt_insert_fwd_op, (hidden, mask, *params, starts, ends, 3, 0.2, 3, max_pool))
    if max_pool:
        return

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(hidden, *p):
        return prompt_ops.lpt_prompt(hidden, *p, num_tokens=3, mode="naive", backend="triton").square().sum()

    naive_hidden, naive_params, _, _ = make(2, 6, 16, 4, 3, "naive")
    loss = step(naive_hidden, *naive_params)
    expected = reference.lpt_prompt(naive_hidden, *naive_params, 3).square().sum()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend):
    hidden, params, mask, index = make(2, 6, 16, 4, 3, "naive")
    with pytest.raises(ValueError, match=r"num_tokens must be an int >= 1, got 0"):
        prompt_ops.lpt_prompt(hidden, *params, num_tokens=0, backend=backend)
    with pytest.raises(ValueError, match=r"mode must be one of \('naive', 'pool', 'max'\)"):
        prompt_ops.lpt_prompt(hidden, *params, num_tokens=3, mode="mean", backend=backend)
    with pytest.raises(ValueError, match=r"index must be in \[0, 6\)"):
        prompt_ops.lpt_prompt(hidden, *params, num_tokens=3, index=torch.tensor([0, 6]), backend=backend)
    with pytest.raises(ValueError, match=r"w_up must have shape \(4, 48\) for mode='naive'"):
        prompt_ops.lpt_prompt(hidden, *params[:2], torch.randn(4, 47), params[3], num_tokens=3, backend=backend)
    for mode in ("pool", "max"):
        pool_hidden, pool_params, pool_mask, _ = make(2, 6, 16, 4, 3, mode)
        pool_mask[1] = 0
        with pytest.raises(ValueError, match=rf"all-padding row \(row 1\): mode='{mode}' pools"):
            prompt_ops.lpt_prompt(pool_hidden, *pool_params, num_tokens=3, attention_mask=pool_mask, mode=mode,
                                  backend=backend)  # fmt: skip
        holed = torch.tensor([[1] * 6, [0, 1, 1, 0, 1, 0]])
        with pytest.raises(ValueError, match=rf"one contiguous block of valid rows .* mode='{mode}' .* row 1 has a"):
            prompt_ops.lpt_insert(pool_hidden, *pool_params, num_tokens=3, attention_mask=holed, mode=mode,
                                  backend=backend)  # fmt: skip
        with pytest.raises(ValueError, match=rf"w_up must have shape \(4, 16\) for mode='{mode}'"):
            prompt_ops.lpt_prompt(pool_hidden, *params, num_tokens=3, mode=mode, backend=backend)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        prompt_ops.lpt_insert(hidden, *params, num_tokens=3, attention_mask=mask[:, :5], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_a_row_alone_equals_the_row_left_padded_in_a_batch(backend, mode):
    """A left-padded row pools (or, for NPG without an index, reads) exactly the rows it has alone; so do a
    right-padded one and one padded on both sides. fp32, with bf16 hidden states too."""
    for dtype in (torch.float32, torch.bfloat16):
        hidden, params, _, _ = make(1, 5, 20, 6, 4, mode, dtype)
        batch = torch.randn(3, 9, 20).to(dtype)
        mask = torch.zeros(3, 9, dtype=torch.long)
        batch[0, 4:], mask[0, 4:] = hidden[0], 1  # left-padded by 4
        batch[1, :5], mask[1, :5] = hidden[0], 1  # right-padded by 4
        batch[2, 2:7], mask[2, 2:7] = hidden[0], 1  # both
        kwargs = {"num_tokens": 4, "mode": mode, "backend": backend}
        alone = prompt_ops.lpt_prompt(hidden, *params, **kwargs)
        together = prompt_ops.lpt_prompt(batch, *params, attention_mask=mask, **kwargs)
        for row in together:
            assert_close(row, alone[0], torch.float32, dot=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_non_finite_rows_no_window_reads_reach_nothing(backend, mode):
    """NaN and inf in the padding and past each row's source: the prompt and every gradient equal the reference's
    with those rows zero (the eager pooling generators once projected every row, so an inf pad reached the
    cumulative sum, the prompt and the gradients)."""
    hidden, params, mask, _ = make(3, 9, 20, 6, 4, mode)
    source_lengths = torch.tensor([5, 6, 4])  # of the 8, 7 and 7 valid rows (ragged_mask)
    first = torch.tensor([1, 1, 0])
    index = first + source_lengths - 1
    unread = (mask == 0) | (torch.arange(9)[None, :] >= (first + source_lengths)[:, None])
    clean = hidden.masked_fill(unread[:, :, None], 0.0)
    dirty = clean.masked_fill(unread[:, :, None], float("inf"))
    dirty[0, 0] = float("nan")
    kwargs = {"num_tokens": 4, "index": index, "attention_mask": mask, "mode": mode, "backend": backend}
    out = prompt_ops.lpt_prompt(dirty, *params, source_lengths=source_lengths, **kwargs)
    assert torch.isfinite(out).all()
    check(out, clean, params, mask, index, 4, mode, source_lengths=source_lengths)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_source_lengths_pool_only_the_source(backend, mode):
    """With ``source_lengths`` the pooling modes pool each row's first ``source_lengths[b]`` valid rows (left and
    right padding, sources shorter than n, of n and longer); NPG reads its index, which is a source row. Forward
    and gradients match the reference; the insertion's mask is the whole input's; changing any row after the
    source changes nothing in the prompt."""
    hidden, params, mask, _ = make(4, 11, 20, 6, 4, mode)
    mask[2, :3] = 0  # left-padded by 3: 8 valid rows
    mask[3, 9:] = 0  # right-padded by 2: 9 valid rows
    source_lengths = torch.tensor([3, 9, 5, 4])
    first = torch.tensor([1, 1, 3, 0])
    index = first + source_lengths - 1  # the last source row
    kwargs = {"num_tokens": 4, "index": index, "attention_mask": mask, "mode": mode, "backend": backend}
    out = prompt_ops.lpt_prompt(hidden, *params, source_lengths=source_lengths, **kwargs)
    check(out, hidden, params, mask, index, 4, mode, source_lengths=source_lengths)
    inserted, mask_out = prompt_ops.lpt_insert(hidden, *params, source_lengths=source_lengths, **kwargs)
    assert torch.equal(inserted[:, :4], out) and torch.equal(mask_out[:, 4:], mask)
    changed = hidden.clone()
    for b in range(4):
        changed[b, first[b] + source_lengths[b] :] = torch.randn(11 - int(first[b] + source_lengths[b]), 20)
    again = prompt_ops.lpt_prompt(changed, *params, source_lengths=source_lengths, **kwargs)
    assert torch.equal(again, out)
    if mode != "naive":  # without source_lengths the changed rows are pooled
        assert not torch.equal(
            prompt_ops.lpt_prompt(changed, *params, **kwargs), prompt_ops.lpt_prompt(hidden, *params, **kwargs)
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_bad_source_lengths_are_named(backend, mode):
    hidden, params, _, _ = make(2, 6, 16, 4, 3, mode)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    index = torch.tensor([1, 0])

    def run(source_lengths, index=index, mask=mask):
        prompt_ops.lpt_insert(hidden, *params, num_tokens=3, index=index, attention_mask=mask, mode=mode,
                              source_lengths=source_lengths, backend=backend)  # fmt: skip

    run(torch.tensor([5, 4], dtype=torch.int32))  # the largest valid values pass
    with pytest.raises(TypeError, match=r"source_lengths must be a torch.Tensor of shape \(B,\), got list"):
        run([5, 4])
    with pytest.raises(TypeError, match=r"source_lengths must be an int64 or int32 tensor, got torch.float32"):
        run(torch.tensor([5.0, 4.0]))
    with pytest.raises(ValueError, match=r"source_lengths must have shape \(B,\) = \(2,\), got \(3,\)"):
        run(torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match=r"source_lengths must have shape \(B,\) \(1-D\)"):
        run(torch.tensor([[1, 1]]))
    with pytest.raises(ValueError, match=r"source_lengths\[1\] = 0: row 1 has no source rows"):
        run(torch.tensor([2, 0]))
    with pytest.raises(
        ValueError,
        match=r"source_lengths must be in \[1, valid rows .* source_lengths\[0\] = 6 for "
        r"a row of 5 valid rows",
    ):
        run(torch.tensor([6, 4]))
    with pytest.raises(ValueError, match=r"source_lengths must be in .* source_lengths\[1\] = -1"):
        run(torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r"row 1 has a hole"):
        run(torch.tensor([1, 1]), mask=torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 0]]))
    if mode == "naive":
        with pytest.raises(
            ValueError,
            match=r"index must point into each row's source rows .* row 0 reads row 3, "
            r"outside its source rows \[1, 3\)",
        ):
            run(torch.tensor([2, 2]), index=torch.tensor([3, 0]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_ties_route_the_gradient_to_the_first_row(backend):
    """Exact ties (small integers, so every projection is exact in any order of addition): every row of a window
    projects to the same ``Z`` (they differ only in a coordinate ``w_down`` ignores), so each window's gradient must
    go to its first row, as ``torch.max`` and ``nn.AdaptiveMaxPool1d`` pick it. The ignored coordinate of ``w_down``
    sees which row that was: its gradient is ``sum_s hidden[b_s, first row of window s, 0] * d_pre[s]``. Left and
    right padding, len % n != 0."""
    batch, seq_len, hidden_size, gen_rank, num_tokens = 2, 8, 5, 3, 3
    hidden = torch.randint(-2, 3, (batch, 1, hidden_size)).float().repeat(1, seq_len, 1)
    hidden[:, :, 0] = torch.arange(1, seq_len + 1).float()  # distinct per row, ignored by the projection
    w_down = torch.randint(-1, 2, (hidden_size, gen_rank)).float()
    w_down[0] = 0
    b_down = torch.tensor([40.0, 41.0, 42.0])  # pre > 0: the ReLU passes every window
    w_up, b_up = torch.randint(-2, 3, (gen_rank, hidden_size)).float(), torch.zeros(hidden_size)
    params = [p.requires_grad_(True) for p in (w_down, b_down, w_up, b_up)]
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]])  # 6 and 7 valid rows
    out = prompt_ops.lpt_prompt(hidden, *params, num_tokens=num_tokens, attention_mask=mask, mode="max",
                                backend=backend)  # fmt: skip
    grad = torch.randint(-2, 3, out.shape).float()
    (got,) = torch.autograd.grad(out, [params[0]], grad, retain_graph=True)
    check(out, hidden, params, mask, None, num_tokens, "max")
    firsts = [[2, 4, 6], [0, 2, 4]]  # first + floor(i * len / n)
    grad_pre = grad.reshape(-1, hidden_size) @ w_up.T  # (S, h)
    first_rows = torch.tensor([hidden[b, t, 0] for b in range(batch) for t in firsts[b]])
    torch.testing.assert_close(got[0], first_rows @ grad_pre, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mppg_is_the_official_generator(backend):
    """The LPT module with ``mode="max"`` against the official MPPG written out with ``nn.Linear`` and
    ``nn.AdaptiveMaxPool1d`` (``proj_down`` on each sample's valid rows, max pooling over the length, ReLU,
    ``proj_up``), right-padded as the official data loaders pad; forward and every gradient."""
    module = prompt_ops.LPT(12, num_tokens=3, hidden_size=5, mode="max", dropout=0.0, backend=backend)
    proj_down, proj_up = torch.nn.Linear(12, 5), torch.nn.Linear(5, 12)
    with torch.no_grad():
        proj_down.weight.copy_(module.w_down.T), proj_down.bias.copy_(module.b_down)
        proj_up.weight.copy_(module.w_up.T), proj_up.bias.copy_(module.b_up)
    hidden = torch.randn(3, 8, 12)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 5:] = mask[2, 2:] = 0  # 8, 5 and 2 valid rows: len % n != 0, len < n
    out = module.prompt(hidden, attention_mask=mask)
    official = []
    for b, length in enumerate(mask.sum(1).tolist()):
        z = proj_down(hidden[b, :length])  # (len, h)
        pooled = torch.nn.AdaptiveMaxPool1d(3)(z.T.unsqueeze(0)).squeeze(0).T  # (n, h)
        official.append(proj_up(torch.relu(pooled)))
    official = torch.stack(official)
    assert_close(out, official, torch.float32, dot=True)
    grad = torch.randn(out.shape)
    got = torch.autograd.grad(out, [module.w_down, module.b_down, module.w_up, module.b_up], grad)
    down_w, down_b, up_w, up_b = torch.autograd.grad(official, [*proj_down.parameters(), *proj_up.parameters()], grad)
    assert_grads_close(got, [down_w.T, down_b, up_w.T, up_b], NAMES)


def check_insert(out, mask_out, hidden, params, mask, index, num_tokens, mode, grad_rows=None):
    """``lpt_insert``'s buffer and mask equal the official prompt-then-cat, and so do the generator gradients
    (from a gradient on the whole buffer, or on ``grad_rows`` of it)."""
    fresh = [p.detach().clone().requires_grad_(True) for p in params]
    prompt = reference.lpt_prompt(hidden.float(), *fresh, num_tokens, index, mask, mode)
    expected, expected_mask = reference.lpt_insert(prompt, hidden, mask)
    assert out.dtype == hidden.dtype and mask_out.dtype == expected_mask.dtype
    assert torch.equal(mask_out, expected_mask)
    assert torch.equal(out[:, num_tokens:], hidden)
    assert_close(out, expected, hidden.dtype, dot=True)
    grad = torch.randn(out.shape).to(out.dtype)
    if grad_rows is not None:
        grad = grad_rows(grad)
    got, want = torch.autograd.grad(out, params, grad), torch.autograd.grad(expected, fresh, grad)
    assert_grads_close(got, want, NAMES, **tolerances(hidden.dtype, dot=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_insert_matches_prompt_then_cat(backend, mode, shape, dtype):
    hidden, params, mask, index = make(*shape, mode, dtype)
    num_tokens = shape[4]
    out, mask_out = prompt_ops.lpt_insert(
        hidden, *params, num_tokens=num_tokens, index=index, attention_mask=mask, mode=mode, backend=backend
    )
    check_insert(out, mask_out, hidden, params, mask, index, num_tokens, mode)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float32"])
def test_insert_mask_dtypes_and_strided_inputs(backend, mask_kind):
    """No mask (int64 ones out), bool and float masks keep their dtype; a transposed hidden and a gradient that
    is not packed (expanded over the batch) take the strided paths."""
    hidden, params, mask, index = make(3, 9, 20, 6, 4, "naive")
    mask = None if mask_kind == "none" else mask.to(getattr(torch, mask_kind))
    hidden = hidden.transpose(1, 2).contiguous().transpose(1, 2)  # (B, L, d) with stride(2) != 1
    out, mask_out = prompt_ops.lpt_insert(hidden, *params, num_tokens=4, index=index, attention_mask=mask,
                                          backend=backend)  # fmt: skip

    def expanded(grad):
        return grad[:1].expand_as(grad)

    check_insert(out, mask_out, hidden, params, mask, index, 4, "naive", grad_rows=expanded)


def test_insert_empty_batch_and_dropout():
    hidden, params, mask, index = make(0, 5, 8, 3, 2, "naive")
    for backend in BACKENDS:
        out, mask_out = prompt_ops.lpt_insert(hidden, *params, num_tokens=2, backend=backend)
        assert out.shape == (0, 7, 8) and mask_out.shape == (0, 7)
        grads = torch.autograd.grad(out.sum(), params)
        assert all(torch.count_nonzero(g) == 0 for g in grads)
    hidden, params, mask, index = make(3, 9, 20, 6, 4, "pool")
    kwargs = {"num_tokens": 4, "attention_mask": mask, "mode": "pool", "dropout_p": 0.3, "training": True}
    out, _ = prompt_ops.lpt_insert(hidden, *params, seed=5, backend="triton", **kwargs)
    prompt = prompt_ops.lpt_prompt(hidden, *params, seed=5, backend="triton", **kwargs)
    assert torch.equal(out[:, :4], prompt)  # the same philox stream as the generator alone


def test_insert_compiles():
    hidden, params, mask, index = make(2, 6, 16, 4, 3, "naive")

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(hidden, mask, *p):
        out, mask_out = prompt_ops.lpt_insert(hidden, *p, num_tokens=3, attention_mask=mask, backend="triton")
        return out.square().sum(), mask_out

    loss, mask_out = step(hidden, mask, *params)
    expected, expected_mask = reference.lpt_insert(reference.lpt_prompt(hidden, *params, 3, None, mask), hidden, mask)
    torch.testing.assert_close(loss, expected.square().sum(), rtol=1e-4, atol=1e-4)
    assert torch.equal(mask_out, expected_mask)
