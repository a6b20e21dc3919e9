"""Graph: tracing front-ends, dataflow analysis, slot placement, and the rewrite passes."""

from esper.graph.analysis import InjectionPoint, find_injection_points
from esper.graph.modes import eval_mode, train_mode
from esper.graph.placement import load_spec, select_points, spec_for
from esper.graph.rewrite import insert_slot_calls
from esper.graph.trace import TraceResult, trace

__all__ = [
    "InjectionPoint",
    "TraceResult",
    "eval_mode",
    "find_injection_points",
    "insert_slot_calls",
    "load_spec",
    "select_points",
    "spec_for",
    "trace",
    "train_mode",
]
