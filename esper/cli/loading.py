"""Load a model (and an example input) from a Python file."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

from esper.cli.main import UsageError


def load_model_file(path: str | Path) -> tuple[nn.Module, torch.Tensor | None]:
    """The model a file defines: `build_model()`, a module-level `model`, or the one
    nn.Module subclass defined there that needs no arguments. Also its `example_input`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such model file: {path}")
    spec = importlib.util.spec_from_file_location(f"esper_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UsageError(f"{path} failed to import: {type(e).__name__}: {e}") from e
    finally:
        sys.path.pop(0)
    example = getattr(module, "example_input", None)
    if callable(getattr(module, "build_model", None)):
        model = module.build_model()
    elif isinstance(getattr(module, "model", None), nn.Module):
        model = module.model
    else:
        model = _only_module_class(module, path)()
    if not isinstance(model, nn.Module):
        raise UsageError(f"{path}: build_model() returned {type(model).__name__}, not an nn.Module")
    return model, example if isinstance(example, torch.Tensor) else None


def _only_module_class(module, path: Path) -> type:
    classes = [
        c
        for c in vars(module).values()
        if inspect.isclass(c) and issubclass(c, nn.Module) and c.__module__ == module.__name__ and _no_required_args(c)
    ]
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise UsageError(
            f"{path} holds no model: define build_model(), a module-level `model`, or exactly one "
            f"nn.Module subclass that needs no arguments (found: {found})"
        )
    return classes[0]


def _no_required_args(cls: type) -> bool:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--input-shape must be comma-separated integers like 1,3,32,32, got {text!r}") from None
    if not shape or any(v <= 0 for v in shape):
        raise UsageError(f"--input-shape must be positive integers, got {text!r}")
    return shape
