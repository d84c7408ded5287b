import math

import pytest
import torch
from conftest import EMULATED, GPU, needs_cuda, needs_real_gpu, run_device_code
from hypothesis import given, settings
from hypothesis import strategies as st

import focalops
from focalops import reference

REDUCTIONS = ["none", "sum", "mean"]


def _inputs(shape, device, dtype=torch.float64, scale=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def _labels(shape, K, device, seed=0, low=-2):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(low, K, shape, generator=g).to(device)


def _grad(fn, x, *args, **kwargs):
    x = x.detach().requires_grad_()
    loss = fn(x, *args, **kwargs)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 0.5), (0.75, 1.0), (0.1, 3.7)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_class_index_matches_reference(device, seed, alpha, gamma, reduction):
    x = _inputs((37, 5, 13), device, seed=seed)
    labels = _labels((37, 5), 13, device, seed=seed)
    got, g_got = _grad(focalops.sigmoid_focal_loss, x, labels, alpha, gamma, reduction)
    want, g_want = _grad(reference.sigmoid_focal_loss, x, labels, alpha, gamma, reduction)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 1.5), (0.5, 0.0), (0.25, 0.5)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dense_soft_targets_match_reference(device, seed, alpha, gamma, reduction):
    x = _inputs((129, 7), device, seed=seed)
    t = torch.rand((129, 7), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
    t[:20] = t[:20].round()  # some hard targets too
    got, g_got = _grad(focalops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    want, g_want = _grad(reference.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-12)


def test_class_index_equals_dense_one_hot(device):
    x = _inputs((300, 11), device, dtype=torch.float32)
    labels = _labels((300,), 11, device, low=-1)
    dense = torch.zeros_like(x)
    fg = labels >= 0
    dense[fg.nonzero()[:, 0], labels[fg]] = 1
    a, ga = _grad(focalops.sigmoid_focal_loss, x, labels, 0.25, 2.0, "none")
    b, gb = _grad(focalops.sigmoid_focal_loss, x, dense, 0.25, 2.0, "none")
    torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(ga, gb, rtol=2e-6, atol=1e-7)


def test_ignored_rows_add_nothing(device):
    x = _inputs((50, 6), device)
    labels = _labels((50,), 6, device, low=-1)
    labels[::3] = -2
    loss, g = _grad(focalops.sigmoid_focal_loss, x, labels, reduction="none")
    assert (loss[::3] == 0).all() and (g[::3] == 0).all()
    assert (loss[1::3] != 0).all()
    labels[::3] = 255
    loss2, g2 = _grad(focalops.sigmoid_focal_loss, x, labels, reduction="none", ignore_index=255)
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(g2, g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_reduced_precision_against_float64(device, dtype, reduction):
    x64 = _inputs((256, 80), device, scale=3.0)
    x = x64.to(dtype)
    labels = _labels((256,), 80, device, low=-1)
    got, g_got = _grad(focalops.sigmoid_focal_loss, x, labels, 0.25, 2.0, reduction)
    # The float64 reference sees the same rounded logits, so only the arithmetic differs.
    want, g_want = _grad(reference.sigmoid_focal_loss, x.double(), labels, 0.25, 2.0, reduction)
    assert got.dtype == dtype and g_got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * 1e-2)
    torch.testing.assert_close(g_got.double(), g_want, rtol=tol, atol=tol * 1e-2)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 4.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_logits_are_finite(device, gamma, dtype):
    vals = torch.tensor([-1e4, -300.0, -88.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 88.0, 300.0, 1e4])
    if dtype != torch.float32:
        vals = vals.clamp(-6e4, 6e4)
    x = vals.repeat(3, 1).to(device=device, dtype=dtype)
    labels = torch.tensor([-1, 0, 5], device=device)
    loss, g = _grad(focalops.sigmoid_focal_loss, x, labels, 0.25, gamma, "none")
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    soft = torch.full_like(x, 0.3)
    loss, g = _grad(focalops.sigmoid_focal_loss, x, soft, 0.25, gamma, "none")
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    # A confidently wrong positive costs alpha * |x| and its gradient is -alpha.
    x32 = torch.tensor([[-1e4]], device=device)
    loss, g = _grad(focalops.sigmoid_focal_loss, x32, torch.tensor([0], device=device), 0.25, gamma, "none")
    torch.testing.assert_close(loss.item(), 0.25 * 1e4)
    torch.testing.assert_close(g.item(), -0.25)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_infinite_logits_give_the_limits(device, gamma, dtype):
    """Class-index form at +-inf: loss 0 or inf, gradient the finite limit (never 0 * inf = NaN)."""
    inf = math.inf
    x = torch.tensor([[inf, -inf], [inf, -inf]], device=device, dtype=dtype)
    labels = torch.tensor([1, -1], device=device)
    loss, g = _grad(focalops.sigmoid_focal_loss, x, labels, 0.25, gamma, "none")
    # +inf negative: (1 - alpha) x, slope 0.75; -inf positive: alpha |x|, slope -0.25; the rest 0.
    want_loss = torch.tensor([[inf, inf], [inf, 0.0]], dtype=dtype)
    want_grad = torch.tensor([[0.75, -0.25], [0.75, 0.0]], dtype=dtype)
    torch.testing.assert_close(loss.cpu(), want_loss)
    torch.testing.assert_close(g.cpu(), want_grad)
    ok = torch.tensor([[inf, -inf]], device=device, dtype=dtype)
    loss, g = _grad(focalops.sigmoid_focal_loss, ok, torch.tensor([0], device=device), 0.25, gamma, "none")
    assert (loss == 0).all() and (g == 0).all()


def _dense_limit(x, t, alpha, gamma):
    """Loss and gradient of the dense form as x -> +-inf: loss ~ alpha_t q^gamma w |x| with
    q = 1 - p_t = w = 1 - t (x -> +inf) or t (x -> -inf); the gradient tends to +-alpha_t q^gamma w."""
    w = torch.where(x > 0, 1 - t, t)
    alpha_t = torch.ones_like(t) if alpha < 0 else alpha * t + (1 - alpha) * (1 - t)
    slope = alpha_t * w**gamma * w
    return torch.where(slope > 0, math.inf, 0.0).to(t.dtype), torch.where(x > 0, slope, -slope)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.7])
@pytest.mark.parametrize("alpha", [0.25, -1.0, 0.0, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_infinite_logits_give_the_limits(device, gamma, alpha, dtype):
    """Dense form at +-inf: softplus(x) - x t is never inf - inf, r ce and alpha_t ce never 0 * inf."""
    t = torch.tensor([0.0, 0.3, 1.0], dtype=dtype).repeat_interleave(2).repeat(3)  # 18: vector body and tail
    x = torch.tensor([math.inf, -math.inf], dtype=dtype).repeat(9)
    loss, g = _grad(focalops.sigmoid_focal_loss, x.to(device), t.to(device), alpha, gamma, "none")
    want_loss, want_grad = _dense_limit(x, t, alpha, gamma)
    torch.testing.assert_close(loss.cpu(), want_loss)
    torch.testing.assert_close(g.cpu(), want_grad)
    total = focalops.sigmoid_focal_loss(x.to(device), t.to(device), alpha, gamma, "sum")
    assert total.item() == want_loss.sum().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_alpha_weight_at_infinity_is_zero(device, dtype):
    """alpha = 1 gives negatives weight 0 (alpha = 0: positives): 0, not 0 * inf = NaN."""
    inf = math.inf
    x = torch.tensor([[inf, -inf]], device=device, dtype=dtype)
    for alpha, label, want in ((1.0, -1, [0.0, 0.0]), (0.0, 1, [inf, 0.0]), (1.0, 1, [0.0, inf])):
        loss, g = _grad(focalops.sigmoid_focal_loss, x, torch.tensor([label], device=device), alpha, 2.0, "none")
        assert loss.tolist() == [want] and torch.isfinite(g).all()
    loss, g = _grad(focalops.sigmoid_focal_loss, x, torch.tensor([[0.0, 0.0]], device=device, dtype=dtype), 1.0, 2.0)
    assert loss.tolist() == [[0.0, 0.0]] and g.tolist() == [[0.0, 0.0]]


def test_ignored_rows_are_zero_whatever_the_logit(device):
    x = torch.tensor([[math.inf, -math.inf, math.nan] * 6, [math.inf, 1.0, 2.0] * 6], device=device)
    loss, g = _grad(focalops.sigmoid_focal_loss, x, torch.tensor([-2, 1], device=device), 0.25, 2.0, "none")
    assert (loss[0] == 0).all() and (g[0] == 0).all()
    assert loss[1, 0] == math.inf and torch.isfinite(g[1]).all()


@pytest.mark.parametrize("gamma", [1e-50, 1e30])
def test_gamma_at_the_float32_edges(device, gamma):
    """1e-50 is 0 in float32 (plain BCE, not 0 * log 0 = NaN); a huge gamma gives 0 where p_t < 1."""
    x = torch.tensor([100.0, -100.0, 0.5, -3.0, math.inf] * 4, device=device)
    t = torch.tensor([1.0, 0.0, 0.7, 0.2, 1.0] * 4, device=device)
    loss, g = _grad(focalops.sigmoid_focal_loss, x, t, 0.25, gamma, "none")
    want, g_want = _grad(reference.sigmoid_focal_loss, x[:4].double(), t[:4].double(), 0.25, float(torch.tensor(gamma)))
    torch.testing.assert_close(loss[:4].double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g[:4].double(), g_want, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()


def test_nan_logits_propagate(device):
    x = torch.tensor([[float("nan"), 1.0] * 9], device=device)  # 18 values: vector body and tail
    loss, g = _grad(focalops.sigmoid_focal_loss, x, torch.tensor([0], device=device), 0.25, 2.0, "none")
    assert torch.isnan(loss[0, ::2]).all() and torch.isfinite(loss[0, 1::2]).all()
    assert torch.isnan(g[0, ::2]).all() and torch.isfinite(g[0, 1::2]).all()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 40),
    K=st.integers(1, 9),
    scale=st.sampled_from([0.1, 5.0, 50.0]),
    alpha=st.sampled_from([-1.0, 0.0, 0.25, 1.0]),
    gamma=st.sampled_from([0.0, 0.5, 2.0, 3.0]),
    soft=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(rows, K, scale, alpha, gamma, soft, reduction, seed):
    x = _inputs((rows, K), "cpu", scale=scale, seed=seed)
    if soft:
        t = torch.rand((rows, K), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    else:
        t = _labels((rows,), K, "cpu", seed=seed)
    got, g_got = _grad(focalops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    want, g_want = _grad(reference.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    if rows == 0 and reduction == "mean":
        assert got.isnan() and want.isnan()
        return
    assert torch.isfinite(got).all() and torch.isfinite(g_got).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    finite = torch.isfinite(g_want)  # the reference's autograd can hit 0 * inf at saturation
    torch.testing.assert_close(g_got[finite], g_want[finite], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", ["index", "dense"])
@pytest.mark.parametrize("contiguous", [True, False])
def test_gradcheck(device, reduction, form, contiguous):
    x = _inputs((6, 5), device, scale=2.0)
    if not contiguous:
        x = _inputs((5, 6), device, scale=2.0).t()
        assert not x.is_contiguous()
    t = _labels((6,), 5, device) if form == "index" else torch.rand(6, 5, dtype=torch.float64, device=device)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: focalops.sigmoid_focal_loss(v, t, 0.25, 2.0, reduction), (x,))
    assert torch.autograd.gradcheck(
        lambda v: focalops.sigmoid_focal_loss(v, t, 0.3, 0.5, reduction, normalizer=torch.tensor(3.0, device=device)),
        (x,),
    )


def test_double_backward_raises():
    x = _inputs((4, 3), "cpu").requires_grad_()
    loss = focalops.sigmoid_focal_loss(x, torch.tensor([0, 1, -1, 2]), reduction="sum")
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_opcheck(device):
    x = _inputs((9, 4), device, dtype=torch.float32).requires_grad_()
    labels = _labels((9,), 4, device)
    soft = torch.rand(9, 4, device=device)
    op = torch.ops.focalops.sigmoid_focal_loss.default
    bwd = torch.ops.focalops._sigmoid_focal_loss_backward.default
    for t in (labels, soft):
        for reduce in (False, True):
            torch.library.opcheck(op, (x, t, 0.25, 2.0, -2, reduce))
            g = torch.ones((), device=device) if reduce else torch.randn(9, 4, device=device)
            torch.library.opcheck(bwd, (g, x.detach(), t, 0.25, 2.0, -2, reduce))


def test_loss_with_grad_op_is_the_forward_and_the_backward():
    torch.library.opcheck(
        torch.ops.focalops._sigmoid_focal_loss_with_grad.default,
        (_inputs((9, 4), "cpu", dtype=torch.float32), _labels((9,), 4, "cpu"), 0.25, 2.0, -2, True),
    )
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = _inputs((33, 70), "cpu", dtype=dtype, scale=6.0)
        x[0, :4] = torch.tensor([math.inf, -math.inf, 0.0, 1e-30])
        for t in (_labels((33,), 70, "cpu"), torch.rand(33, 70, dtype=torch.float64).to(dtype)):
            for reduce in (False, True):
                loss, grad = torch.ops.focalops._sigmoid_focal_loss_with_grad(x, t, 0.25, 2.0, -2, reduce)
                ones = torch.ones((), dtype=x.dtype) if reduce else torch.ones_like(x)
                want_grad = torch.ops.focalops._sigmoid_focal_loss_backward(ones, x, t, 0.25, 2.0, -2, reduce)
                assert torch.equal(loss, torch.ops.focalops.sigmoid_focal_loss(x, t, 0.25, 2.0, -2, reduce))
                assert torch.equal(grad, want_grad)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_training_path_equals_the_op_path(reduction, dtype):
    # On CPU with inputs.requires_grad the wrapper takes _sigmoid_focal_loss_with_grad (the
    # gradient written by the forward, scaled in place); the registered autograd of the op is
    # what torch.compile and CUDA use. Both must give the same bits, a second backward too.
    x = _inputs((50, 7), "cpu", dtype=dtype).requires_grad_()
    t = _labels((50,), 7, "cpu")
    upstream = torch.rand(50, 7, dtype=dtype) if reduction == "none" else None
    loss = focalops.sigmoid_focal_loss(x, t, 0.25, 2.0, reduction, normalizer=3.0)
    node, names = loss.grad_fn, []
    while node is not None:
        names.append(node.name())
        node = node.next_functions[0][0] if node.next_functions else None
    assert "_LossAndGradientBackward" in names, names
    (g1,) = torch.autograd.grad(loss, x, upstream, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, upstream)
    op = torch.ops.focalops.sigmoid_focal_loss(x, t, 0.25, 2.0, -2, reduction != "none")
    op = (op / x.numel() if reduction == "mean" else op) / 3.0
    (want,) = torch.autograd.grad(op.to(dtype), x, upstream)
    assert torch.equal(loss, op.to(dtype))
    assert torch.equal(g1, want) and torch.equal(g2, want)


def test_cpu_gradient_block_is_reused_by_the_next_step():
    # A gradient of >= 4 MB freed at the end of a step is the next step's block (no fresh pages to
    # fault in); one that is still alive is never handed out again.
    x = _inputs((4096, 300), "cpu", dtype=torch.float32).requires_grad_()
    t = _labels((4096,), 300, "cpu")

    def step():
        return torch.autograd.grad(focalops.sigmoid_focal_loss(x, t, reduction="sum"), x)[0]

    first = step()
    want, ptr = first.clone(), first.data_ptr()
    del first
    again = step()
    assert again.data_ptr() == ptr and torch.equal(again, want)
    other = step()
    assert other.data_ptr() != again.data_ptr() and torch.equal(other, want)
    del again, other
    small = torch.autograd.grad(focalops.sigmoid_focal_loss(x[:10], t[:10], reduction="sum"), x)[0]
    assert torch.equal(small[:10], want[:10]) and not small[10:].any()


def test_torch_compile_fullgraph(device):
    def step(x, labels, n):
        return focalops.sigmoid_focal_loss(x, labels, reduction="sum", normalizer=n)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = _inputs((64, 10), device, dtype=torch.float32).requires_grad_()
    labels = _labels((64,), 10, device)
    n = (labels >= 0).sum().clamp(min=1).float()
    got, g_got = _grad(compiled, x, labels, n)
    want, g_want = _grad(step, x, labels, n)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)


def test_torch_compile_inductor_training_step():
    # One inductor run: the op must survive real lowering (fake kernel, autograd, normalizer math).
    lin = torch.nn.Linear(8, 5)
    x = torch.randn(32, 8)
    labels = torch.randint(-1, 5, (32,))

    def step(inp):
        logits = lin(inp)
        return focalops.sigmoid_focal_loss(logits, labels, reduction="sum", normalizer=(labels >= 0).sum().clamp(min=1))

    want = step(x)
    want.backward()
    g_want = lin.weight.grad.clone()
    lin.weight.grad = None
    got = torch.compile(step, fullgraph=True)(x)
    got.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(lin.weight.grad, g_want)


def test_reductions_normalizer_and_module(device):
    x = _inputs((40, 3), device)
    labels = _labels((40,), 3, device)
    none = focalops.sigmoid_focal_loss(x, labels)
    total = focalops.sigmoid_focal_loss(x, labels, reduction="sum")
    torch.testing.assert_close(total, none.sum())
    torch.testing.assert_close(focalops.sigmoid_focal_loss(x, labels, reduction="mean"), none.mean())
    torch.testing.assert_close(focalops.sigmoid_focal_loss(x, labels, reduction="sum", normalizer=4), total / 4)
    n = torch.tensor(8.0, device=device)
    torch.testing.assert_close(focalops.sigmoid_focal_loss(x, labels, reduction="sum", normalizer=n), total / 8)
    module = focalops.SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(module(x, labels, normalizer=n), total / 8)
    assert "gamma=2.0" in repr(module)


def test_empty_inputs(device):
    x = torch.empty(0, 80, device=device, requires_grad=True)
    labels = torch.empty(0, dtype=torch.long, device=device)
    assert focalops.sigmoid_focal_loss(x, labels).shape == (0, 80)
    total = focalops.sigmoid_focal_loss(x, labels, reduction="sum")
    assert total.item() == 0.0
    total.backward()
    assert x.grad.shape == (0, 80)
    assert (
        focalops.sigmoid_focal_loss(
            torch.empty(5, 0, device=device), torch.zeros(5, dtype=torch.long, device=device) - 1, reduction="sum"
        ).item()
        == 0.0
    )


def test_non_contiguous_and_integer_label_dtypes(device):
    base = _inputs((10, 8, 6), device, dtype=torch.float32)
    x = base[:, ::2, :]
    labels = _labels((10, 4), 6, device)
    want = focalops.sigmoid_focal_loss(x.contiguous(), labels)
    torch.testing.assert_close(focalops.sigmoid_focal_loss(x, labels), want)
    torch.testing.assert_close(focalops.sigmoid_focal_loss(x, labels.int()), want)
    dense = torch.rand(10, 4, 6, device=device)
    torch.testing.assert_close(
        focalops.sigmoid_focal_loss(x, dense), focalops.sigmoid_focal_loss(x.contiguous(), dense)
    )
    torch.testing.assert_close(
        focalops.sigmoid_focal_loss(x, dense > 0.5), focalops.sigmoid_focal_loss(x, (dense > 0.5).float())
    )


def test_sum_is_deterministic_across_thread_counts():
    x = _inputs((5000, 80), "cpu", dtype=torch.float32)
    labels = _labels((5000,), 80, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = focalops.sigmoid_focal_loss(x, labels, reduction="sum")
        torch.set_num_threads(max(2, threads))
        many = focalops.sigmoid_focal_loss(x, labels, reduction="sum")
    finally:
        torch.set_num_threads(threads)
    assert one.item() == many.item()


def test_float32_sum_beyond_the_float_range_is_inf():
    """The sum is accumulated in float64; past the float32 range it is inf, not an error."""
    x = torch.tensor([[0.0, 3e38, 3e38]])
    total = focalops.sigmoid_focal_loss(x, torch.tensor([0]), reduction="sum")
    assert total.dtype == torch.float32 and total.item() == math.inf
    big = torch.full((1, 2), 1.7e38)  # 0.75 * 3.4e38 = 2.55e38: still finite
    assert math.isfinite(focalops.sigmoid_focal_loss(big, torch.tensor([-1]), reduction="sum").item())


def test_sum_float32_accumulation_does_not_overflow_half():
    x = torch.full((4000, 80), -12.0, dtype=torch.float16)
    labels = torch.zeros(4000, dtype=torch.long)  # 4000 confidently wrong positives, ~ 0.25 * 12 each
    total = focalops.sigmoid_focal_loss(x, labels, reduction="sum", normalizer=4000)
    assert torch.isfinite(total) and math.isclose(total.item(), 0.25 * 12.0, rel_tol=1e-2)


# --- bad input ------------------------------------------------------------------------------


def test_bad_inputs():
    x = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, -1])
    f = focalops.sigmoid_focal_loss
    with pytest.raises(ValueError, match="reduction"):
        f(x, labels, reduction="avg")
    with pytest.raises(ValueError, match="gamma"):
        f(x, labels, gamma=-0.5)
    with pytest.raises(ValueError, match="gamma"):
        f(x, labels, gamma=float("nan"))
    with pytest.raises(ValueError, match="alpha"):
        f(x, labels, alpha=1.5)
    with pytest.raises(TypeError, match="inputs"):
        f(x.long(), labels)
    with pytest.raises(TypeError, match="inputs must be a Tensor"):
        f([1.0, 2.0], labels)
    with pytest.raises(TypeError, match="targets"):
        f(x, torch.zeros(4, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="shape"):
        f(x, torch.zeros(4, 4))
    with pytest.raises(ValueError, match="class-index targets must have shape"):
        f(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="class-index targets must have shape"):
        f(x, torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="normalizer"):
        f(x, labels, reduction="sum", normalizer=0)
    with pytest.raises(ValueError, match="normalizer"):
        f(x, labels, reduction="sum", normalizer=torch.ones(2))
    with pytest.raises(ValueError, match="ignore_index"):
        f(x, labels, ignore_index=-1)
    with pytest.raises(RuntimeError, match=r"class index 3 at row 1, outside \[0, 3\)"):
        f(x, torch.tensor([0, 3, 1, 1]))
    with pytest.raises(RuntimeError, match="class index -5"):
        f(x, torch.tensor([0, -5, 1, 1]))
    with pytest.raises(RuntimeError, match=r"class index 0 at row 1, outside \[0, 0\)"):
        f(torch.empty(3, 0), torch.tensor([-1, 0, -2]), reduction="sum")
    for bad in (1.5, -0.25, math.nan):
        t = torch.rand(4, 3)
        t[2, 1] = bad
        with pytest.raises(RuntimeError, match=r"dense targets must be in \[0, 1\], got .* at flat index 7"):
            f(x, t)
        with pytest.raises(RuntimeError, match=r"dense targets must be in \[0, 1\]"):
            f(x.double().requires_grad_(), t.double(), reduction="sum").backward()


@pytest.mark.parametrize(
    "normalizer, match",
    [
        (0, "positive finite number"),
        (-2.0, "positive finite number"),
        (math.inf, "positive finite number"),
        (math.nan, "positive finite number"),
        ("4", "positive finite number"),
        (torch.tensor(0.0), "positive and finite, got 0.0"),
        (torch.tensor(-3), "positive and finite, got -3"),
        (torch.tensor(math.nan), "positive and finite, got nan"),
        (torch.tensor([math.inf]), "positive and finite, got inf"),
        (torch.ones(2), r"real 0-d tensor, got torch.float32 \[2\]"),
        (torch.tensor(1 + 1j), "real 0-d tensor"),
    ],
)
def test_bad_normalizer(normalizer, match):
    with pytest.raises(ValueError, match=match):
        focalops.sigmoid_focal_loss(
            torch.randn(4, 3), torch.tensor([0, 1, 2, -1]), reduction="sum", normalizer=normalizer
        )


def test_cpu_tensor_normalizer_moves_to_the_loss_device(device):
    x = _inputs((5, 3), device)
    labels = _labels((5,), 3, device)
    total = focalops.sigmoid_focal_loss(x, labels, reduction="sum")
    got = focalops.sigmoid_focal_loss(x, labels, reduction="sum", normalizer=torch.tensor([4]))
    assert got.device == x.device
    torch.testing.assert_close(got, total / 4)


def test_bad_inputs_reach_the_op_directly():
    x = torch.randn(4, 3)
    op = torch.ops.focalops.sigmoid_focal_loss
    with pytest.raises(RuntimeError, match="gamma must be >= 0"):
        op(x, torch.zeros(4, dtype=torch.long), 0.25, -1.0, -2, False)
    with pytest.raises(RuntimeError, match="targets must be int64 class indices or have the dtype"):
        op(x, torch.zeros(4, 3, dtype=torch.float64), 0.25, 2.0, -2, False)
    with pytest.raises(RuntimeError, match="inputs must be float32"):
        op(x.int(), torch.zeros(4, dtype=torch.long), 0.25, 2.0, -2, False)
    with pytest.raises(RuntimeError, match="gamma must be >= 0 and finite, got inf"):
        op(x, torch.zeros(4, dtype=torch.long), 0.25, math.inf, -2, False)
    with pytest.raises(RuntimeError, match="alpha must be <= 1"):
        op(x, torch.zeros(4, dtype=torch.long), math.nan, 2.0, -2, False)
    with pytest.raises(RuntimeError, match="ignore_index must not be -1"):
        op(x, torch.zeros(4, dtype=torch.long), 0.25, 2.0, -1, False)
    with pytest.raises(RuntimeError, match=r"class index 3 at row 0, outside \[0, 0\)"):
        op(torch.empty(2, 0), torch.tensor([3, -1]), 0.25, 2.0, -2, True)
    with pytest.raises(RuntimeError, match=r"dense targets must be in \[0, 1\]"):
        op(x, torch.full((4, 3), 2.0), 0.25, 2.0, -2, True)
    with pytest.raises(RuntimeError, match=r"dense targets must be in \[0, 1\]"):
        torch.ops.focalops._sigmoid_focal_loss_backward(torch.ones(()), x, -torch.ones(4, 3), 0.25, 2.0, -2, True)


@needs_cuda
def test_device_mismatch_raises():
    with pytest.raises(ValueError, match="same device"):
        focalops.sigmoid_focal_loss(torch.randn(4, 3, device=GPU), torch.zeros(4, dtype=torch.long))


@needs_real_gpu
def test_cuda_matches_cpu_and_never_syncs():
    x = _inputs((1000, 80), "cpu", dtype=torch.float32)
    labels = _labels((1000,), 80, "cpu", low=-1)
    want, g_want = _grad(focalops.sigmoid_focal_loss, x, labels, 0.25, 2.0, "sum")
    xc, lc = x.cuda().requires_grad_(), labels.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = focalops.sigmoid_focal_loss(xc, lc, reduction="sum", normalizer=(lc >= 0).sum().clamp(min=1))
        (g,) = torch.autograd.grad(loss, xc)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    n = (labels >= 0).sum().clamp(min=1)
    torch.testing.assert_close(loss.cpu(), want / n, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.cpu(), g_want / n, rtol=1e-5, atol=1e-7)


@needs_cuda
def test_cuda_bad_label_is_a_device_assert():
    code = (
        "x = torch.randn(4, 3, device='{dev}')\n"
        "focalops.sigmoid_focal_loss(x, torch.tensor([0, 7, 1, 1], device='{dev}'))\n"
    )
    finished, out = run_device_code(code)
    assert not finished and "assert" in out.lower(), out


# --- CUDA kernel paths: alignment, grid-stride repeats, 32-bit chunks, broadcast gradients ----

_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: {}, torch.bfloat16: {}}


def _loss_and_grad(x, targets, reduction, grad_out=None, **kw):
    x = x.detach().requires_grad_()
    loss = focalops.sigmoid_focal_loss(x, targets, 0.25, 2.0, reduction, **kw)
    (g,) = torch.autograd.grad(loss, x, grad_outputs=grad_out if grad_out is not None else torch.ones_like(loss))
    return loss.detach(), g


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("K", [1, 3, 7, 80])
@pytest.mark.parametrize("offset", [1, 2, 3])
def test_cuda_unaligned_view_matches_aligned_and_cpu(dtype, K, offset):
    """`x.view(-1)[offset:]`: packs start after a peeled head; an input aligned differently from
    the output is read element by element. Elementwise results do not depend on the alignment."""
    rows = 1237  # odd: the tail is not a whole pack either
    base = _inputs((rows * K + offset,), GPU, dtype=torch.float32).to(dtype)
    x = base[offset:].view(rows, K)
    assert x.data_ptr() % 16 != 0
    labels = _labels((rows,), K, GPU, low=-2)
    soft = torch.rand(rows * K + 5, device=GPU, dtype=dtype)[5:].view(rows, K)  # misaligned unlike x
    gbase = torch.randn(rows * K + 2, device=GPU, dtype=dtype)
    grad_out = gbase[2:].view(rows, K)  # an incoming gradient aligned unlike the output
    for targets in (labels, soft):
        for reduction, g_in in (("none", grad_out), ("none", None), ("sum", None)):
            got, g_got = _loss_and_grad(x, targets, reduction, g_in)
            ref, g_ref = _loss_and_grad(
                x.contiguous().clone(), targets.clone(), reduction, None if g_in is None else g_in.clone()
            )
            if reduction == "none":
                assert torch.equal(got, ref)  # same per-element math wherever the packs start
            else:
                torch.testing.assert_close(got, ref, **_TOL[dtype])  # other pack partition
            assert torch.equal(g_got, g_ref)
            cpu, g_cpu = _loss_and_grad(x.cpu(), targets.cpu(), reduction, None if g_in is None else g_in.cpu())
            torch.testing.assert_close(got.cpu(), cpu, **_TOL[dtype])
            torch.testing.assert_close(g_got.cpu(), g_cpu, **_TOL[dtype])


@needs_cuda
@pytest.mark.parametrize("K", [80, 91])
def test_cuda_large_input_matches_cpu_and_sums_are_bit_identical(K):
    """> 1M elements: several grid-stride steps per thread (the grid is one wave of resident
    blocks); the sum agrees with the CPU and is bit-identical from run to run."""
    rows = 60_000  # 4.8M / 5.5M elements
    x = _inputs((rows, K), "cpu", dtype=torch.float32, scale=3.0)
    labels = _labels((rows,), K, "cpu", low=-2)
    cpu, g_cpu = _loss_and_grad(x, labels, "sum")
    xc, lc = x.to(GPU), labels.to(GPU)
    runs = [_loss_and_grad(xc, lc, "sum") for _ in range(3)]
    for loss, g in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(g, runs[0][1])
    torch.testing.assert_close(runs[0][0].cpu(), cpu, rtol=1e-5, atol=0)
    torch.testing.assert_close(runs[0][1].cpu(), g_cpu, rtol=1e-5, atol=1e-7)
    none, g_none = _loss_and_grad(xc, lc, "none")
    torch.testing.assert_close(none.cpu(), focalops.sigmoid_focal_loss(x, labels), rtol=1e-5, atol=1e-6)


@needs_real_gpu
def test_cuda_broadcast_gradient_is_not_materialised():
    """`loss(reduction="none").sum()` hands the backward a stride-0 gradient: it is read as one
    scalar (same gradient as reduction="sum"), without a numel-sized copy."""
    x = _inputs((50_000, 80), "cuda", dtype=torch.float32).requires_grad_()
    labels = _labels((50_000,), 80, "cuda")
    (g_sum,) = torch.autograd.grad(focalops.sigmoid_focal_loss(x, labels, reduction="sum"), x)
    loss = focalops.sigmoid_focal_loss(x, labels).sum()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    (g,) = torch.autograd.grad(loss, x)
    torch.cuda.synchronize()
    nbytes = x.numel() * x.element_size()
    assert torch.cuda.max_memory_allocated() - before < nbytes + (1 << 20)  # the gradient itself, no copy
    assert torch.equal(g, g_sum)
    # A gradient broadcast along some dimensions only is an ordinary (copied) gradient.
    (g_rows,) = torch.autograd.grad(
        focalops.sigmoid_focal_loss(x, labels), x, torch.ones(50_000, 1, device="cuda").expand(-1, 80)
    )
    assert torch.equal(g_rows, g_sum)


@needs_cuda
def test_cuda_over_2_30_elements_run_in_32_bit_chunks():
    """Over 2^30 elements a launch covers one 2^30-element chunk (32-bit indices); chunk starts
    fall mid-row and mid-pack. Elements equal the same elements computed on their own rows.
    (The emulator's chunks are 2^16 elements, cuda::kFocalChunk there: same code, small input.)"""
    K = 91
    chunk = 1 << 16 if EMULATED else 1 << 30
    rows = chunk // K + 1000  # 2^30 + ~90k elements in bfloat16 (2 GB)
    if not EMULATED and torch.cuda.mem_get_info()[0] < 12 * (1 << 30):
        pytest.skip("needs 12 GB of free GPU memory")
    g = torch.Generator(device="cpu" if EMULATED else GPU).manual_seed(0)
    x = (torch.randn(rows, K, generator=g, device=g.device) * 3).to(GPU, torch.bfloat16)
    labels = torch.randint(-2, K, (rows,), generator=g, device=g.device).to(GPU)
    total = focalops.sigmoid_focal_loss(x, labels, reduction="sum")
    split = chunk // K  # the row holding element 2^30
    parts = focalops.sigmoid_focal_loss(x[:split], labels[:split], reduction="sum").float() + (
        focalops.sigmoid_focal_loss(x[split:], labels[split:], reduction="sum").float()
    )
    torch.testing.assert_close(total.float(), parts, rtol=1e-5, atol=0)
    tail = slice(split - 2, split + 3)
    none = focalops.sigmoid_focal_loss(x, labels)
    assert torch.equal(none[tail], focalops.sigmoid_focal_loss(x[tail].clone(), labels[tail].clone()))
    del none
    xg = x.requires_grad_()
    (grad,) = torch.autograd.grad(focalops.sigmoid_focal_loss(xg, labels, reduction="sum"), xg)
    (grad_tail,) = torch.autograd.grad(focalops.sigmoid_focal_loss(xg[tail], labels[tail], reduction="sum"), xg)
    assert torch.equal(grad[tail], grad_tail[tail])


@needs_cuda
def test_cuda_bad_label_mid_pack_is_a_device_assert():
    # K = 3: the bad row starts inside a 16-byte pack, where the kernel loads the next row's label.
    code = (
        "x = torch.randn(64, 3, device='{dev}')\n"
        "t = torch.zeros(64, dtype=torch.long, device='{dev}')\n"
        "t[5] = 3\n"
        "focalops.sigmoid_focal_loss(x, t, reduction='sum')\n"
    )
    finished, out = run_device_code(code)
    assert not finished and "assert" in out.lower(), out
