"""esper: grow neural networks while they train."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from esper.kasmina.checkpoint import load, save
from esper.kasmina.export import export
from esper.kasmina.instrument import instrument
from esper.kasmina.model import MorphogeneticModel
from esper.kasmina.plane import KasminaPlane
from esper.kasmina.replay import replay
from esper.kasmina.slot import SeedSlot
from esper.leyline import (
    CheckpointError,
    DistributedError,
    Edit,
    EsperError,
    ExportError,
    LifecycleError,
    Op,
    SeedStage,
    TraceError,
)

try:
    __version__ = _version("esper")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = [
    "CheckpointError",
    "DistributedError",
    "Edit",
    "EsperError",
    "ExportError",
    "Gardener",
    "KasminaPlane",
    "LifecycleError",
    "MorphogeneticModel",
    "Op",
    "SeedSlot",
    "SeedStage",
    "TraceError",
    "export",
    "instrument",
    "load",
    "replay",
    "save",
]


def __getattr__(name):
    # Lazily: the integrations bring in simic and the policies, which `import esper` need not load.
    if name == "Gardener":
        from esper.integrations.gardener import Gardener

        return Gardener
    raise AttributeError(f"module 'esper' has no attribute {name!r}")
