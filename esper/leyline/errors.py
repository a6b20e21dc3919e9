"""Errors raised across esper. Each one says what went wrong and what to try."""


class EsperError(Exception):
    """Base class of every error esper raises on purpose."""


class TraceError(EsperError):
    """The host could not be traced or analysed, by any front-end."""

    def __init__(self, message: str, module: str = "", location: str = "", hint: str = ""):
        self.module = module
        self.location = location
        self.hint = hint
        parts = [message]
        if module:
            parts.append(f"module: {module}")
        if location:
            parts.append(f"at: {location}")
        if hint:
            parts.append(f"try: {hint}")
        super().__init__("\n  ".join(parts))


class InputError(TraceError):
    """The host itself fails on the example inputs: the inputs, not tracing, are at fault."""


class SpecError(EsperError, ValueError):
    """A slot spec or slot count that cannot place any slot."""


class EditError(EsperError, ValueError):
    """A malformed edit, or one that does not replay; `index` is its place in the log."""

    def __init__(self, message: str, index: int | None = None):
        self.index = index
        super().__init__(message)


class LifecycleError(EsperError):
    """A seed slot was asked to make a move its lifecycle does not allow."""

    def __init__(self, slot: str, stage, move: str, reason: str = ""):
        self.slot = slot
        self.stage = stage
        self.move = move
        stage_name = getattr(stage, "name", str(stage))
        text = f"slot '{slot}' in stage {stage_name} cannot {move}"
        if reason:
            text += f": {reason}"
        super().__init__(text)


class CheckpointError(EsperError):
    """A checkpoint is missing, truncated, tampered with, untrusted or from an incompatible model."""


class ExportError(EsperError):
    """A model cannot be exported as it stands."""


class HostFileError(EsperError):
    """A model file that cannot be loaded, or holds no model."""


class DataError(EsperError, ValueError):
    """A dataset spec, file or archive cannot be used as given."""


class RunError(EsperError, ValueError):
    """A training run directory that cannot be started or resumed as asked."""


class UsageError(EsperError):
    """A command-line mistake: printed as one line, exit code 2."""


class DistributedError(EsperError):
    """The ranks of a distributed run disagree, or one of them stopped answering."""
