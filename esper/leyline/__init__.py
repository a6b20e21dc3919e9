"""Leyline: the shared contracts (stages and the one transition table, edits, telemetry, observations, vocabulary, errors)."""

from esper.leyline.edits import Edit, Op, edits_from_yaml, edits_to_yaml
from esper.leyline.errors import (
    CheckpointError,
    DataError,
    DistributedError,
    EditError,
    EsperError,
    ExportError,
    HostFileError,
    InputError,
    LifecycleError,
    RunError,
    SpecError,
    TraceError,
    UsageError,
)
from esper.leyline.stages import (
    ACTIVE_STAGES,
    TRANSITIONS,
    SeedStage,
    check_move,
    legal_ops,
    target_stage,
)
from esper.leyline.telemetry import SlotTelemetry

__all__ = [
    "ACTIVE_STAGES",
    "TRANSITIONS",
    "CheckpointError",
    "DataError",
    "DistributedError",
    "Edit",
    "EditError",
    "EsperError",
    "ExportError",
    "HostFileError",
    "InputError",
    "LifecycleError",
    "Op",
    "RunError",
    "SeedStage",
    "SlotTelemetry",
    "SpecError",
    "TraceError",
    "UsageError",
    "check_move",
    "edits_from_yaml",
    "edits_to_yaml",
    "legal_ops",
    "target_stage",
]

from esper.leyline.observations import (  # noqa: E402
    BLUEPRINT_FEATURES,
    BLUEPRINT_PROPERTIES,
    GLOBAL_FEATURES,
    MAX_BLENDS,
    MAX_BLUEPRINTS,
    NUM_BLUEPRINT_FEATURES,
    NUM_GLOBAL_FEATURES,
    NUM_OPS,
    NUM_SLOT_FEATURES,
    SLOT_FEATURES,
    Observation,
    ObservationBatch,
    batch_observations,
)

__all__ += [
    "BLUEPRINT_FEATURES",
    "BLUEPRINT_PROPERTIES",
    "GLOBAL_FEATURES",
    "MAX_BLENDS",
    "MAX_BLUEPRINTS",
    "NUM_BLUEPRINT_FEATURES",
    "NUM_GLOBAL_FEATURES",
    "NUM_OPS",
    "NUM_SLOT_FEATURES",
    "SLOT_FEATURES",
    "Observation",
    "ObservationBatch",
    "batch_observations",
]

from esper.leyline.episodes import EpisodeSummary, StepInfo  # noqa: E402
from esper.leyline.vocabulary import Vocabulary  # noqa: E402

__all__ += ["EpisodeSummary", "StepInfo", "Vocabulary"]
