"""Tracing front-ends: torch.fx first, then fx with offending modules as leaves, then torch.export.

Every front-end returns an fx.Graph whose nodes carry `nn_module_stack` and an
`esper_value` summary recorded from a real forward pass over the example inputs.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from esper.graph.modes import eval_mode, train_mode
from esper.leyline import InputError, TraceError

MAX_LEAF_RETRIES = 8

# When torch.export fails it prints its partial graph to stderr and logs symbolic-shape
# warnings, dozens of lines ahead of the TraceError that says what went wrong; the fallback
# keeps them to itself (on the error as `torch_output`) unless this is True (`esper --verbose`).
VERBOSE = False


@dataclass(frozen=True)
class ValueSummary:
    """What a node produced in the probe forward pass."""

    shape: tuple[int, ...] | None  # set when the value is one tensor
    floating: bool  # the value is, or holds, a floating-point tensor
    dtype: torch.dtype | None = None  # set when the value is one tensor


@dataclass
class TraceResult:
    kind: str  # "fx" or "export"
    graph: fx.Graph
    input_node: str  # the placeholder the main activation stream starts from
    leaves: list[str] = field(default_factory=list)  # modules kept opaque by the fx retry
    fx_failure: str = ""  # why fx was not used, when kind == "export"


class _PathTracer(fx.Tracer):
    """A tracer that remembers the innermost module a failure came from."""

    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves
        self.failed_at: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = self.path_of_module(m)
            raise


def _summarize(value: Any) -> ValueSummary:
    if isinstance(value, torch.Tensor):
        return ValueSummary(tuple(value.shape), value.is_floating_point(), value.dtype)
    if isinstance(value, (tuple, list)):
        return ValueSummary(None, any(_summarize(v).floating for v in value))
    if isinstance(value, dict):
        return ValueSummary(None, any(_summarize(v).floating for v in value.values()))
    return ValueSummary(None, False)


class _Recorder(fx.Interpreter):
    def run_node(self, n):
        out = super().run_node(n)
        n.meta["esper_value"] = _summarize(out)
        return out


def _concrete_args(model: nn.Module, n_inputs: int) -> dict[str, Any]:
    """Fix every forward parameter the example inputs do not fill to its default."""
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {}
    for p in params[n_inputs:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            raise TraceError(
                f"{type(model).__name__}.forward needs argument '{p.name}' that the example inputs do not give",
                hint="pass one example input per required forward argument",
            )
        concrete[p.name] = p.default
    return concrete


def _user_frame(exc: BaseException) -> str:
    """The last traceback frame outside torch: usually the host's offending line."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(torch_dir)]
    frames = [f for f in frames if "/esper/graph/" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"


def _fx_trace(model: nn.Module, example_inputs: tuple) -> tuple[fx.GraphModule, list[str]]:
    concrete = _concrete_args(model, len(example_inputs))
    leaves: set[str] = set()
    for _ in range(MAX_LEAF_RETRIES + 1):
        tracer = _PathTracer(leaves)
        try:
            graph = tracer.trace(model, concrete_args=concrete or None)
        except Exception as e:
            where = tracer.failed_at
            if not where or where in leaves:
                raise _FxFailure(where or "", e) from e
            leaves.add(where)
            continue
        for n in graph.nodes:
            if n.op == "call_module" and n.target in leaves:
                n.meta["esper_opaque"] = True
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
        return gm, sorted(leaves)
    raise _FxFailure(sorted(leaves)[-1], RuntimeError("too many modules had to be kept opaque"))


class _FxFailure(Exception):
    def __init__(self, module: str, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.module = module
        self.cause = cause


def _run_probe(gm: fx.GraphModule, args: tuple) -> None:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    full = list(args) + [None] * (len(placeholders) - len(args))
    with torch.no_grad():
        _Recorder(gm).run(*full)


def _mode_stable(model: nn.Module, example_inputs: tuple, code: str) -> bool:
    """fx bakes `self.training` branches into the graph; such a graph serves one mode only."""
    with train_mode(model, not model.training):
        try:
            other, _ = _fx_trace(model, example_inputs)
        except _FxFailure:
            return False
    return other.code == code


@contextlib.contextmanager
def _quiet():
    """Hold back what torch prints, logs and warns inside the block (unless VERBOSE); yields
    the buffer that stderr went to."""
    buffer = io.StringIO()
    if VERBOSE:
        yield buffer
        return
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(buffer), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        logging.disable(previous)


def _export_graph(model: nn.Module, example_inputs: tuple) -> tuple[fx.Graph, str]:
    with eval_mode(model):
        ep = torch.export.export(model, tuple(example_inputs), strict=False)
    user_inputs = list(ep.graph_signature.user_inputs)
    if not user_inputs:
        raise TraceError(f"{type(model).__name__} takes no tensor input to follow", hint="pass example_inputs")
    for n in ep.graph.nodes:
        val = n.meta.get("val")
        n.meta["esper_value"] = _summarize(val) if val is not None else ValueSummary(None, False)
    return ep.graph, user_inputs[0]


def trace(model: nn.Module, example_inputs: tuple, prefer: str = "fx") -> TraceResult:
    """Trace `model` with the first front-end that works; raise TraceError when none does."""
    fx_failure = ""
    first_failure: _FxFailure | None = None
    if prefer == "fx":
        try:
            with eval_mode(model):
                gm, leaves = _fx_trace(model, example_inputs)
                if _mode_stable(model, example_inputs, gm.code):
                    _run_probe(gm, example_inputs)
                    first = next(n.name for n in gm.graph.nodes if n.op == "placeholder")
                    return TraceResult("fx", gm.graph, first, leaves)
            fx_failure = "the fx graph differs between train and eval mode"
        except _FxFailure as f:
            fx_failure = _describe(f.module, f.cause)
            first_failure = f
        except Exception as e:  # the traced graph itself failed to run on the example inputs
            fx_failure = _describe("", e)
            first_failure = _FxFailure("", e)
    try:
        with _quiet() as held_back:
            graph, first = _export_graph(model, example_inputs)
    except Exception as e:
        _check_runs(model, example_inputs)
        f = first_failure or _FxFailure("", e)
        error = TraceError(
            f"could not trace {type(model).__name__} with torch.fx ({fx_failure or 'not tried'}) "
            f"nor torch.export ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            module=f.module or "(root)",
            location=_user_frame(f.cause),
            hint="make the named module traceable (no Python control flow on tensor values), "
            "or pass a spec that places slots on modules that trace, or wrap the untraceable "
            "code in a function decorated with torch.fx.wrap",
        )
        error.torch_output = held_back.getvalue()  # what torch.export printed while it failed
        raise error from e
    return TraceResult("export", graph, first, [], fx_failure)


def _check_runs(model: nn.Module, example_inputs: tuple) -> None:
    """When every front-end failed: if the plain model fails too, the inputs are at fault."""
    try:
        with eval_mode(model), torch.no_grad():
            model(*example_inputs)
    except Exception as e:
        shapes = ", ".join(f"{tuple(a.shape)} {str(a.dtype).removeprefix('torch.')}" for a in example_inputs if isinstance(a, torch.Tensor))
        memory = isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) or "allocate" in str(e)
        raise InputError(
            f"{type(model).__name__} {'runs out of memory' if memory else 'fails'} on the example input {shapes}: {_describe('', e)}",
            hint="give an example input the model accepts: batch first, with the rank, channels, size and dtype it expects",
        ) from e


def _describe(module: str, cause: BaseException) -> str:
    where = _user_frame(cause)
    text = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    if module:
        text += f" in module '{module}'"
    if where:
        text += f" at {where}"
    return text
