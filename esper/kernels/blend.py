"""Seed blending: ``out = h + alpha * (s - h)`` in one fused Triton pass.

A seed slot mixes a seed's output ``s`` into the host activation ``h``. The
gradient treats the ``h`` inside the parentheses as detached, so the host keeps
its whole gradient while the seed fades in:

    dh = g        ds = alpha * g        dalpha = sum(g * (s - h)) over alpha's broadcast dims

``straight_through`` is the isolated-training form: the value is ``h`` bit for
bit while both ``h`` and ``s`` receive ``g``.

Index scheme. ``h`` (made contiguous) is viewed as ``(outer, mid, inner)``.
Dims where ``h`` has size 1 are dropped, and neighbouring dims that alpha
either spans or broadcasts over are merged, leaving at most three alternating
groups; alpha varies along one of ``mid`` / ``inner`` (or neither) and may also
vary along ``outer``. That covers scalar, (B,1,..,1), (B,C,1,1), (1,C,1,1),
(B,T,1), (B,1,D), (1,1,D) and alpha of h's full shape; anything needing four
groups goes to the reference. A program owns a ``(BLOCK_M, BLOCK_I)`` tile of
one ``outer`` slice, so alpha is one scalar or one small vector per tile and
no per-element integer division is needed.

Benchmark: ``tools/bench_kernels.py`` compares these ops with eager PyTorch,
``torch.lerp``, ``torch.compile`` and a plain copy. Both ops are memory bound,
so the yardstick is copy bandwidth: forward moves 3 element transfers (h, s,
out), forward+backward 6 in the benchmark's accounting.
"""

from typing import NamedTuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the references need neither; the ops are then not registered
    triton = None

HAS_TRITON = triton is not None

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------- references


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Skipping no-op casts keeps exported fp32 graphs to the bare sub/mul/add.
    return t if t.dtype == dtype else t.to(dtype)


def blend_reference(h: torch.Tensor, s: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Plain-torch blend with the kernel's numerics: math in fp32 (fp64 stays fp64)."""
    compute = torch.float64 if h.dtype == torch.float64 else torch.float32
    hc, sc, ac = (_as(t, compute) for t in (h, s, alpha))
    return _as(hc + ac * (sc - hc.detach()), h.dtype)


def straight_through_reference(h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Value ``h``, gradient ``g`` to both inputs.

    Subtracting rather than adding the zero keeps it bit exact: ``s.detach() - s``
    is +0.0 for finite s, and ``x - (+0.0)`` is x even for x = -0.0, where
    ``x + 0.0`` would flip the sign bit.
    """
    return h - (s.detach() - s)


# ----------------------------------------------------------------- index plan


class Plan(NamedTuple):
    outer: int
    mid: int
    inner: int
    axis: int  # where alpha varies inside a tile: 0 nowhere, 1 along mid, 2 along inner
    a_stride_o: int  # alpha's stride along outer, 0 where it broadcasts there


def plan(shape: torch.Size, alpha_shape: torch.Size) -> Plan | None:
    """The (outer, mid, inner) view of ``shape`` for alpha, or None if it needs >3 groups."""
    alpha_shape = (1,) * (len(shape) - len(alpha_shape)) + tuple(alpha_shape)
    groups: list[list] = []  # [size, alpha spans it]
    for n, a in zip(shape, alpha_shape):
        if n == 1:
            continue
        spans = a != 1
        if groups and groups[-1][1] == spans:
            groups[-1][0] *= n
        else:
            groups.append([n, spans])
    if len(groups) > 3:
        return None
    groups = [[1, False]] * (3 - len(groups)) + groups
    (outer, o_spans), (mid, m_spans), (inner, i_spans) = groups
    axis = 2 if i_spans else 1 if m_spans else 0
    # Groups alternate, so alpha spanning outer implies it spans inner, not mid.
    return Plan(outer, mid, inner, axis, inner if o_spans else 0)


def supports(h: torch.Tensor, alpha: torch.Tensor) -> bool:
    """Whether the Triton blend handles these inputs (else the caller uses the reference)."""
    return HAS_TRITON and h.dtype in _KERNEL_DTYPES and alpha.device == h.device and plan(h.shape, alpha.shape) is not None


# Elements per tile: 16 per thread at 4 warps keeps enough bytes in flight for HBM.
_TILE = 2048
# When alpha varies along inner, narrow tiles leave rows for dalpha to sum over.
_NARROW = 256
# Rows one backward program folds into a dalpha partial, so the partial buffer
# stays ~1/64 of h instead of one value per tile row.
_FOLD_ROWS = 64


def _tiles(p: Plan, fold: bool) -> tuple[int, int, int]:
    block_i = min(triton.next_power_of_2(p.inner), _NARROW if p.axis == 2 else _TILE)
    block_m = min(_TILE // block_i, triton.next_power_of_2(p.mid))
    # Folding only pays where partials are per column; elsewhere it just starves the grid.
    steps = max(1, _FOLD_ROWS // block_m) if fold and p.axis == 2 else 1
    return block_m, block_i, min(steps, triton.cdiv(p.mid, block_m))


# -------------------------------------------------------------------- kernels


# The kernels exist only with triton; without it the ops below are never registered.
if HAS_TRITON:

    @triton.jit
    def _tile_alpha(a_ptr, a_base, rows, cols, row_ok, col_ok, AXIS: tl.constexpr):
        if AXIS == 1:
            a = tl.load(a_ptr + a_base + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        elif AXIS == 2:
            a = tl.load(a_ptr + a_base + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        else:
            a = tl.load(a_ptr + a_base).to(tl.float32)
        return a

    @triton.jit
    def _blend_fwd_kernel(
        h_ptr, s_ptr, a_ptr, out_ptr,
        M, I, a_stride_o, n_m_blocks, n_i_blocks,
        AXIS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr,
    ):  # fmt: skip
        # One flat grid axis: CUDA caps grid axes 1 and 2 at 65535 programs.
        pid = tl.program_id(0)
        pid_i = pid % n_i_blocks
        pid_m = (pid // n_i_blocks) % n_m_blocks
        o = pid // (n_i_blocks * n_m_blocks)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        row_ok, col_ok = rows < M, cols < I
        mask = row_ok[:, None] & col_ok[None, :]
        # int64 rows: h may exceed 2**31 elements; the per-element part stays a single add.
        offs = ((o.to(tl.int64) * M + rows) * I)[:, None] + cols[None, :]
        a = _tile_alpha(a_ptr, o * a_stride_o, rows, cols, row_ok, col_ok, AXIS)
        h = tl.load(h_ptr + offs, mask=mask).to(tl.float32)
        s = tl.load(s_ptr + offs, mask=mask).to(tl.float32)
        tl.store(out_ptr + offs, (h + a * (s - h)).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _blend_bwd_kernel(
        g_ptr, h_ptr, s_ptr, a_ptr, ds_ptr, part_ptr,
        M, I, a_stride_o, n_chunks, n_i_blocks, m_steps,
        AXIS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr,
        NEED_DALPHA: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        pid_i = pid % n_i_blocks
        chunk = (pid // n_i_blocks) % n_chunks
        o = pid // (n_i_blocks * n_chunks)
        cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        col_ok = cols < I
        a_base = o * a_stride_o
        col_acc = tl.zeros((BLOCK_I,), tl.float32)
        for step in range(m_steps):
            rows = (chunk * m_steps + step) * BLOCK_M + tl.arange(0, BLOCK_M)
            row_ok = rows < M
            mask = row_ok[:, None] & col_ok[None, :]
            offs = ((o.to(tl.int64) * M + rows) * I)[:, None] + cols[None, :]
            a = _tile_alpha(a_ptr, a_base, rows, cols, row_ok, col_ok, AXIS)
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(ds_ptr + offs, (a * g).to(ds_ptr.dtype.element_ty), mask=mask)
            if NEED_DALPHA:
                h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                prod = g * (s - h)
                if AXIS == 1:
                    # Each row is its own alpha entry: one partial per (outer, column block, row).
                    part_offs = (o * n_i_blocks + pid_i) * M + rows
                    tl.store(part_ptr + part_offs, tl.sum(prod, axis=1), mask=row_ok)
                else:
                    col_acc += tl.sum(prod, axis=0)
        if NEED_DALPHA:
            if AXIS == 2:
                tl.store(part_ptr + (o * n_chunks + chunk) * I + cols, col_acc, mask=col_ok)
            elif AXIS == 0:
                tl.store(part_ptr + pid, tl.sum(col_acc, axis=0))


# ------------------------------------------------------------------ launchers


def _plan_or_raise(h: torch.Tensor, alpha: torch.Tensor) -> Plan:
    p = plan(h.shape, alpha.shape)
    if p is None:
        raise ValueError(f"esper::blend: no kernel for alpha {tuple(alpha.shape)} over h {tuple(h.shape)}")
    return p


def _blend_fwd(h: torch.Tensor, s: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    p = _plan_or_raise(h, alpha)
    h, s, alpha = h.contiguous(), s.contiguous(), alpha.contiguous()
    out = torch.empty_like(h)
    if out.numel() == 0:
        return out
    block_m, block_i, _ = _tiles(p, fold=False)
    n_m, n_i = triton.cdiv(p.mid, block_m), triton.cdiv(p.inner, block_i)
    torch.library.wrap_triton(_blend_fwd_kernel)[(p.outer * n_m * n_i,)](
        h, s, alpha, out, p.mid, p.inner, p.a_stride_o, n_m, n_i,
        AXIS=p.axis, BLOCK_M=block_m, BLOCK_I=block_i,
    )  # fmt: skip
    return out


def _blend_bwd(
    g: torch.Tensor, h: torch.Tensor, s: torch.Tensor, alpha: torch.Tensor, need_dalpha: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ds, dalpha); dalpha is an empty placeholder unless need_dalpha."""
    p = _plan_or_raise(g, alpha)
    g, alpha = g.contiguous(), alpha.contiguous()
    if need_dalpha:
        h, s = h.contiguous(), s.contiguous()
    ds = torch.empty(g.shape, dtype=s.dtype, device=g.device)
    if g.numel() == 0:
        return ds, alpha.new_zeros(alpha.shape) if need_dalpha else alpha.new_empty(0)
    block_m, block_i, steps = _tiles(p, fold=need_dalpha)
    n_chunks, n_i = triton.cdiv(p.mid, block_m * steps), triton.cdiv(p.inner, block_i)
    # Partials as (outer, partial programs, alpha entries along the tile's varying axis).
    part_shape = [(p.outer, n_chunks * n_i, 1), (p.outer, n_i, p.mid), (p.outer, n_chunks, p.inner)][p.axis]
    part = torch.empty(part_shape if need_dalpha else 0, dtype=torch.float32, device=g.device)
    torch.library.wrap_triton(_blend_bwd_kernel)[(p.outer * n_chunks * n_i,)](
        g, h, s, alpha, ds, part, p.mid, p.inner, p.a_stride_o, n_chunks, n_i, steps,
        AXIS=p.axis, BLOCK_M=block_m, BLOCK_I=block_i, NEED_DALPHA=need_dalpha,
    )  # fmt: skip
    if not need_dalpha:
        return ds, alpha.new_empty(0)
    dalpha = part.sum(1)
    if p.a_stride_o == 0:
        dalpha = dalpha.sum(0)
    return ds, dalpha.reshape(alpha.shape).to(alpha.dtype)


# --------------------------------------------------------------- registration


def _blend_setup(ctx, inputs, output):
    h, s, alpha = inputs
    # h and s only feed dalpha; keeping them otherwise would pin two activations.
    ctx.save_for_backward(*((h, s, alpha) if alpha.requires_grad else (None, None, alpha)))


def _blend_backward(ctx, g):
    h, s, alpha = ctx.saved_tensors
    need_ds, need_dalpha = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    if not (need_ds or need_dalpha):
        return g, None, None
    if not need_dalpha:
        # ds = alpha * g alone is one elementwise multiply (rounded once, in fp32 for every
        # kernel dtype, as in the kernel): an ATen kernel moves the same bytes for a fraction
        # of the CPU time a Triton launch from Python takes, and the step is CPU bound.
        return g, (g * alpha).to(g.dtype), None
    ds, dalpha = torch.ops.esper.blend_backward(g, h, s, alpha, need_dalpha)
    return g, ds if need_ds else None, dalpha if need_dalpha else None


def _straight_through(h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    # A copy is the floor: aliasing h would be free, but custom ops may not return
    # input aliases and in-place ops on an aliased output would corrupt the host.
    return h.clone()


def _straight_through_backward(ctx, g):
    return g, g


def _blend_fwd_fake(h, s, alpha):
    return torch.empty(h.shape, dtype=h.dtype, device=h.device)


def _blend_bwd_fake(g, h, s, alpha, need_dalpha):
    ds = torch.empty(g.shape, dtype=s.dtype, device=g.device)
    return ds, alpha.new_empty(alpha.shape if need_dalpha else 0)


def _register() -> None:
    """Define the esper:: ops once per process.

    Skipped when they already exist (a reload, or this file imported under a
    second module name): the first definitions stay valid, and a reload refreshes
    the globals they look their kernels up in.
    """
    if hasattr(torch.ops.esper, "blend"):
        return
    lib = torch.library
    fwd = lib.triton_op("esper::blend", mutates_args=())(_blend_fwd)
    bwd = lib.triton_op("esper::blend_backward", mutates_args=())(_blend_bwd)
    # Shape-only fakes instead of tracing the launchers: cheaper, and under
    # TRITON_INTERPRET wrap_triton hands back the bare kernel, which cannot take
    # fake tensors, so export would fail there.
    fwd.register_fake(_blend_fwd_fake)
    bwd.register_fake(_blend_bwd_fake)
    fwd.register_autograd(_blend_backward, setup_context=_blend_setup)
    st = lib.triton_op("esper::straight_through", mutates_args=())(_straight_through)
    st.register_autograd(_straight_through_backward, setup_context=lambda ctx, inputs, output: None)


if HAS_TRITON:
    _register()
