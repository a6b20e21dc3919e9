"""Blend kernels against their references; without a GPU Triton runs in its CPU interpreter."""

import importlib
import importlib.util
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import esper.kernels as K
from esper.kernels import blend_reference, straight_through_reference

# Dims alpha keeps, as a function of h's rank; every other dim broadcasts.
LAYOUTS = {
    "scalar": lambda r: None,
    "per_sample": lambda r: {0},  # (B, 1, ..., 1)
    "sample_channel": lambda r: {0, 1},  # (B, C, 1, 1)
    "channel": lambda r: {1},  # (1, C, 1, 1)
    "sample_feature": lambda r: {0, r - 1},  # (B, 1, D)
    "feature": lambda r: {r - 1},  # (1, 1, D)
    "token": lambda r: set(range(r - 1)),  # (B, T, 1)
    "full": lambda r: set(range(r)),
}
ALPHA_FILLS = ("zero", "one", "uniform", "wide")
# On a GPU machine the Triton path runs for real; elsewhere conftest turns on the interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def needs_triton():
    if K.HAS_TRITON:
        return
    if os.environ.get("CI"):
        # CI installs torch's Linux wheel, which brings triton: a skip there would hide a broken install.
        pytest.fail("triton is not installed, so the Triton kernels are untested; it comes with torch's Linux wheels")
    pytest.skip("triton is not installed")


def alpha_shape(shape, kept):
    return () if kept is None else tuple(n if d in kept else 1 for d, n in enumerate(shape))


def randn(shape, gen):
    return torch.randn(shape, generator=gen).to(DEVICE)


def make_alpha(shape, fill, gen):
    if fill == "zero":
        return torch.zeros(shape, device=DEVICE)
    if fill == "one":
        return torch.ones(shape, device=DEVICE)
    if fill == "uniform":
        return torch.rand(shape, generator=gen).to(DEVICE)
    return 2 * randn(shape, gen)


def make_input(shape, gen, contiguous):
    if contiguous:
        return randn(shape, gen)
    # Same shape, reversed strides: exercises the kernels' contiguity handling.
    return randn(shape[::-1], gen).permute(*reversed(range(len(shape))))


@st.composite
def blend_cases(draw, named_only):
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=rank, max_size=rank)))
    if named_only:
        kept = LAYOUTS[draw(st.sampled_from(sorted(LAYOUTS)))](rank)
    else:
        kept = {d for d in range(rank) if draw(st.booleans())}
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    contiguous = draw(st.booleans())
    h, s = make_input(shape, gen, contiguous), make_input(shape, gen, contiguous)
    alpha = make_alpha(alpha_shape(shape, kept), draw(st.sampled_from(ALPHA_FILLS)), gen)
    return h, s, alpha, randn(shape, gen), draw(st.booleans())


def run_blend(fn, h, s, alpha, g, alpha_grad):
    h, s = h.clone().requires_grad_(), s.clone().requires_grad_()
    alpha = alpha.clone().requires_grad_(alpha_grad)
    out = fn(h, s, alpha)
    out.backward(g)
    return out.detach(), h.grad, s.grad, alpha.grad


EPS32 = torch.finfo(torch.float32).eps


def assert_within(name, got, want, bound):
    """|got - want| <= bound, element by element (bound broadcasts); names the worst element."""
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, want.shape, got.dtype, want.dtype)
    diff = (got.double() - want.double()).abs()
    over = diff > bound
    if over.any():
        excess = torch.where(over, diff - bound, torch.zeros_like(diff))
        i = tuple(int(j) for j in torch.unravel_index(excess.argmax(), diff.shape)) if diff.dim() else ()
        b = bound[i] if isinstance(bound, torch.Tensor) and bound.dim() else bound
        raise AssertionError(
            f"{name}: {int(over.sum())} of {diff.numel()} elements beyond the rounding bound; "
            f"worst at {i}: got {float(got[i])!r}, reference {float(want[i])!r}, "
            f"|difference| {float(diff[i]):.3g} > bound {float(b):.3g}"
        )


def rounding_bounds(h, s, alpha, g):
    """How far the kernel may honestly be from the reference on these inputs, from fp32
    epsilon alone, so that no CPU or GPU's float order can fail the comparison.

    out: both compute d = s - h and h + alpha * d in fp32, the same operations, but a
    compiler may fuse the multiply-add (one rounding fewer). The unfused product is off by
    at most u|alpha d| and each final add by u|result| (u = eps/2), so the two differ by at
    most u(2|h| + 3|alpha d|) < eps(|h| + 2|alpha||s - h|). ds = alpha * g is one rounded
    multiply in both: equal. dalpha: both sum the fp32 products g * d, over the n
    elements each alpha entry broadcasts to, in different orders. Any order of summing n
    terms is within (n - 1) u sum|g d| of the exact sum, and a product fused into the
    sum skips its rounding (u |g d|), so the two are within n eps sum|g d|. Half
    precision: see cast_bound.
    """
    h64, s64, a64, g64 = (t.double() for t in (h, s, alpha, g))
    d = (s64 - h64).abs()
    out = EPS32 * (h64.abs() + 2 * a64.abs() * d)
    n = h.numel() // alpha.numel()
    dalpha = n * EPS32 * (g64.abs() * d).sum_to_size(alpha.shape)
    return out, dalpha


def cast_bound(dtype, ref):
    """What rounding an fp32 result once more to `dtype` may add: nothing for fp32. Else
    the two paths may round differently (Triton's CPU interpreter truncates to bfloat16
    where torch rounds to nearest), up to a unit in the last place each way: 2 eps |ref|,
    or 2 subnormal steps near zero."""
    if dtype == torch.float32:
        return torch.zeros_like(ref, dtype=torch.float64)
    info = torch.finfo(dtype)
    return 2 * info.eps * (ref.double().abs() + info.smallest_normal)


def check_blend_matches_reference(case):
    h, s, alpha, g, alpha_grad = case
    with K.backend("triton"):
        out, dh, ds, dalpha = run_blend(K.blend, h, s, alpha, g, alpha_grad)
    ref_out, _, ref_ds, ref_dalpha = run_blend(blend_reference, h, s, alpha, g, alpha_grad)
    assert out.dtype == h.dtype and out.shape == h.shape
    out_bound, dalpha_bound = rounding_bounds(h, s, alpha, g)
    assert_within("out", out, ref_out, out_bound + cast_bound(h.dtype, ref_out))
    assert torch.equal(dh, g)
    # alpha * g is one rounded multiply on both paths: equal in fp32.
    assert_within("ds", ds, ref_ds, cast_bound(h.dtype, ref_ds))
    if alpha_grad:
        assert dalpha.shape == alpha.shape
        assert_within("dalpha", dalpha, ref_dalpha, dalpha_bound + cast_bound(alpha.dtype, ref_dalpha))
    else:
        assert dalpha is None


def no_fallback():
    return mock.patch.object(K, "blend_reference", side_effect=AssertionError("fell back to the reference"))


# ------------------------------------------------------------ triton vs reference


@settings(max_examples=100)
@given(blend_cases(named_only=True))
def test_blend_kernel_matches_reference(case):
    needs_triton()
    with no_fallback():
        check_blend_matches_reference(case)


def index_groups(shape, a_shape):
    """Alternating runs of dims alpha spans or broadcasts over, size-1 dims left out: the
    kernel documents that it covers up to three."""
    a_shape = (1,) * (len(shape) - len(a_shape)) + tuple(a_shape)
    runs = [a != 1 for n, a in zip(shape, a_shape) if n != 1]
    return sum(1 for i, spans in enumerate(runs) if i == 0 or spans != runs[i - 1])


@given(blend_cases(named_only=False))
def test_blend_any_broadcast_layout_matches_reference(case):
    needs_triton()
    h, _, alpha, _, _ = case
    if index_groups(h.shape, alpha.shape) <= 3:
        # Without this guard a layout the kernel wrongly declined would compare the reference with itself.
        with no_fallback():
            check_blend_matches_reference(case)
    else:
        with K.backend("triton"), mock.patch.object(K, "blend_reference", wraps=blend_reference) as ref:
            K.blend(h, h, alpha)
        ref.assert_called_once()  # four groups: the documented fallback


def on_a_grid(case):
    """The case with h, s and g on the integers -8..8 and alpha on eighths in [-4, 4]. Every
    value, product and partial sum is then exact in fp32 (|g (s - h)| <= 128, at most 9**4
    of them: below 2**20), so any summation order, fused or not, gives the same bits."""
    h, s, alpha, g, _ = case
    grid = lambda t: (4 * t).round().clamp(-8, 8)  # noqa: E731
    return grid(h), grid(s), (8 * alpha).round().clamp(-32, 32) / 8, grid(g)


@given(blend_cases(named_only=False))
def test_blend_kernel_equals_reference_where_rounding_cannot_differ(case):
    """Exact, so a single dropped or doubled element shows, however long the sum."""
    needs_triton()
    h, s, alpha, g = on_a_grid(case)
    assume(index_groups(h.shape, alpha.shape) <= 3)
    with K.backend("triton"), no_fallback():
        got = run_blend(K.blend, h, s, alpha, g, True)
    want = run_blend(blend_reference, h, s, alpha, g, True)
    for name, a, b in zip(("out", "dh", "ds", "dalpha"), got, want):
        assert a.shape == b.shape and torch.equal(a, b), name


@pytest.mark.parametrize(
    ("shape", "a_shape"),
    [
        ((2, 3000), ()),  # scalar over several column blocks
        ((2, 3000), (2, 1)),  # per sample, partial last block
        ((150, 300), (1, 300)),  # alpha along inner: folded rows, ragged chunks
        ((2, 75, 300), (2, 1, 300)),  # alpha along outer and inner
        ((3, 130, 5, 5), (1, 130, 1, 1)),  # alpha along mid, many rows per tile
        ((4, 6, 9), (9,)),  # alpha with fewer dims than h
    ],
)
@pytest.mark.parametrize("alpha_grad", [True, False])
def test_blend_kernel_tiling(shape, a_shape, alpha_grad):
    needs_triton()
    gen = torch.Generator().manual_seed(0)
    alpha = make_alpha(a_shape, "uniform", gen)
    case = (randn(shape, gen), randn(shape, gen), alpha, randn(shape, gen), alpha_grad)
    with no_fallback():
        check_blend_matches_reference(case)


def test_blend_kernel_empty_input():
    needs_triton()
    gen = torch.Generator().manual_seed(0)
    empty = randn((0, 3), gen)
    check_blend_matches_reference((empty, empty, make_alpha((1, 3), "uniform", gen), empty, True))


def test_blend_alpha_one_and_zero_endpoints():
    needs_triton()
    gen = torch.Generator().manual_seed(0)
    h, s = randn((4, 5), gen), randn((4, 5), gen)
    with K.backend("triton"):
        assert torch.equal(K.blend(h, s, torch.tensor(0.0)), h)
        torch.testing.assert_close(K.blend(h, s, 1.0), s)


@pytest.mark.parametrize(
    ("s_shape", "a_shape"),
    [((3, 5), ()), ((3, 4), (2, 1)), ((3, 4), (2, 3, 4))],
    ids=["s_shape", "not_broadcastable", "alpha_grows_h"],
)
def test_blend_rejects_mismatched_shapes(s_shape, a_shape):
    with pytest.raises(ValueError):
        K.blend(torch.randn(3, 4), torch.randn(s_shape), torch.rand(a_shape))


@given(st.lists(st.integers(1, 3), max_size=4), st.lists(st.integers(1, 3), max_size=5))
def test_blend_takes_exactly_the_alphas_that_broadcast_to_h_without_growing_it(h_shape, a_shape):
    try:
        fits = torch.broadcast_shapes(tuple(h_shape), tuple(a_shape)) == tuple(h_shape)
    except RuntimeError:
        fits = False
    h = torch.randn(h_shape)
    if fits:
        K.blend(h, torch.randn(h_shape), torch.rand(a_shape))
    else:
        with pytest.raises(ValueError):
            K.blend(h, torch.randn(h_shape), torch.rand(a_shape))


# ------------------------------------------------------------ references


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_blend_reference_gradcheck(layout):
    shape = (3, 4, 5)
    h = torch.randn(shape, dtype=torch.float64)
    s = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    a = torch.rand(alpha_shape(shape, LAYOUTS[layout](3)), dtype=torch.float64, requires_grad=True)
    # Only s and alpha: dh = g is deliberately not the derivative of the value.
    assert torch.autograd.gradcheck(lambda s, a: blend_reference(h, s, a), (s, a))
    h.requires_grad_()
    g = torch.randn(shape, dtype=torch.float64)
    blend_reference(h, s, a).backward(g)
    assert torch.equal(h.grad, g)


def test_straight_through_reference_gradcheck():
    h = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, 4, dtype=torch.float64)
    # Only h: s gets g by design although the value ignores it.
    assert torch.autograd.gradcheck(lambda h: straight_through_reference(h, s), (h,))


# ------------------------------------------------------------ straight-through


@st.composite
def st_cases(draw):
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=rank, max_size=rank)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    h = make_input(shape, gen, draw(st.booleans()))
    h[(0,) * rank] = -0.0  # the one value `h + 0.0` would not preserve
    return h, randn(shape, gen), randn(shape, gen)


def bits(t):
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@given(case=st_cases())
def test_straight_through(backend, case):
    if backend == "triton":
        needs_triton()
    h0, s0, g = case
    h, s = h0.clone().requires_grad_(), s0.clone().requires_grad_()
    with K.backend(backend):
        out = K.straight_through(h, s)
    assert torch.equal(bits(out), bits(h0))
    out.backward(g)
    assert torch.equal(h.grad, g) and torch.equal(s.grad, g)


def test_straight_through_kernel_ignores_nonfinite_seed_and_owns_its_output():
    needs_triton()
    h = torch.tensor([-0.0, 1.0, -2.0], device=DEVICE)
    s = torch.tensor([float("inf"), float("nan"), 1.0], device=DEVICE, requires_grad=True)
    with K.backend("triton"):
        out = K.straight_through(h, s)
    assert torch.equal(bits(out), bits(h))
    out.mul_(2)
    assert torch.equal(h, torch.tensor([-0.0, 1.0, -2.0], device=DEVICE))


# ------------------------------------------------------------ backend switch


def test_backend_switch_and_context():
    before = K.get_backend()
    with K.backend("reference"):
        assert K.get_backend() == "reference"
        with pytest.raises(ValueError):
            K.set_backend("cuda")
        assert K.get_backend() == "reference"
    assert K.get_backend() == before


def test_forced_triton_on_cpu_needs_interpreter(monkeypatch):
    needs_triton()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with K.backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        K.blend(torch.randn(2, 3), torch.randn(2, 3), 0.5)


def test_auto_uses_reference_on_cpu():
    h = torch.randn(2, 3, requires_grad=True)
    with K.backend("auto"), mock.patch.object(K, "blend_reference", wraps=blend_reference) as ref:
        K.blend(h, torch.randn(2, 3), 0.5)
    ref.assert_called_once()


def test_import_without_triton_and_env_default():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, esper.kernels as K\n"
        "assert not K.HAS_TRITON and K.get_backend() == 'reference'\n"
        "h = torch.randn(2, 3)\n"
        "assert torch.equal(K.blend(h, torch.randn(2, 3), 0.0), h)\n"
        "K.set_backend('triton')\n"
        "try:\n    K.blend(h, h, 0.5)\nexcept RuntimeError as e:\n    assert 'triton' in str(e)\n"
        "else:\n    raise SystemExit('forced triton without triton did not raise')\n"
    )
    env = {**os.environ, "ESPER_KERNELS": "reference"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_reimport_keeps_the_registered_ops():
    needs_triton()
    module = sys.modules["esper.kernels.blend"]
    importlib.reload(module)
    spec = importlib.util.spec_from_file_location("esper_blend_second_copy", module.__file__)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    h = torch.randn(3, 4, device=DEVICE)
    with K.backend("triton"), no_fallback():
        torch.testing.assert_close(K.blend(h, torch.zeros_like(h), 0.25), 0.75 * h)


# ------------------------------------------------------------ compile / export


class Slot(torch.nn.Module):
    def forward(self, h, s, alpha):
        return torch.relu(K.blend(h, s, alpha))


def example_inputs():
    gen = torch.Generator().manual_seed(0)
    return randn((2, 3, 4), gen), randn((2, 3, 4), gen), make_alpha((2, 1, 1), "uniform", gen)


def test_missing_triton_is_a_failure_in_ci_and_a_skip_elsewhere(monkeypatch):
    monkeypatch.setattr(K, "HAS_TRITON", False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="triton is not installed"):
        needs_triton()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        needs_triton()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_kernel_matches_reference(dtype):
    needs_triton()
    if DEVICE == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    gen = torch.Generator().manual_seed(0)
    h, s, g = (randn((3, 40, 5, 5), gen).to(dtype) for _ in range(3))
    alpha = make_alpha((3, 40, 1, 1), "uniform", gen).to(dtype)
    with K.backend("triton"), no_fallback():
        out, dh, ds, dalpha = run_blend(K.blend, h, s, alpha, g, True)
    ref_out, _, ref_ds, ref_dalpha = run_blend(blend_reference, h, s, alpha, g, True)
    assert out.dtype == dtype and ds.dtype == dtype and dalpha.dtype == dtype
    # Both compute in fp32 and round once to `dtype`: see rounding_bounds and cast_bound.
    out_bound, dalpha_bound = rounding_bounds(h, s, alpha, g)
    assert_within("out", out, ref_out, out_bound + cast_bound(dtype, ref_out))
    assert torch.equal(dh, g)
    assert_within("ds", ds, ref_ds, cast_bound(dtype, ref_ds))
    assert_within("dalpha", dalpha, ref_dalpha, dalpha_bound + cast_bound(dtype, ref_dalpha))


def test_compile_over_the_triton_op():
    needs_triton()
    graphs = []

    def keep_graph(gm, inputs):
        graphs.append(gm)
        return gm.forward

    # On the CPU interpreter an AOT backend cannot run the kernel on fake tensors, so there the
    # Dynamo graph itself runs; on a GPU the op goes through AOT autograd as well.
    compiler = "aot_eager" if DEVICE == "cuda" else keep_graph
    h, s, a = example_inputs()
    eager = [t.clone().requires_grad_() for t in (h, s, a)]
    traced = [t.clone().requires_grad_() for t in (h, s, a)]
    with K.backend("triton"), no_fallback():
        expected = Slot()(*eager)
        expected.sum().backward()
        torch._dynamo.reset()
        got = torch.compile(Slot(), backend=compiler, fullgraph=True)(*traced)
        got.sum().backward()
    torch.testing.assert_close(got, expected)
    for x, y in zip(eager, traced):
        torch.testing.assert_close(x.grad, y.grad)
    if graphs:
        assert any(n.target is torch.ops.esper.blend for n in graphs[0].graph.nodes)  # the op itself, no graph break


def test_compile_reference_backend():
    # AOT autograd may reduce alpha's gradient in another order than eager: float64 makes
    # that rounding ~1e-16, far inside torch's float64 tolerance (1e-7).
    h, s, a = (t.double() for t in example_inputs())
    eager = [t.clone().requires_grad_() for t in (h, s, a)]
    traced = [t.clone().requires_grad_() for t in (h, s, a)]
    with K.backend("reference"):
        Slot()(*eager).sum().backward()
        torch._dynamo.reset()
        torch.compile(Slot(), backend="aot_eager", fullgraph=True)(*traced).sum().backward()
    for name, x, y in zip(("dh", "ds", "dalpha"), eager, traced):
        torch.testing.assert_close(y.grad, x.grad, msg=lambda report, name=name: f"{name}: {report}")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_export(backend):
    if backend == "triton":
        needs_triton()
    inputs = example_inputs()
    with K.backend(backend):
        ep = torch.export.export(Slot(), inputs)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert ("esper.blend.default" in targets) == (backend == "triton")
    torch.testing.assert_close(ep.module()(*inputs), Slot()(*inputs))
