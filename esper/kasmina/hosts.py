"""Where hosts come from: model files, and factories a checkpoint can call again."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

from esper.leyline import EsperError


class HostFileError(EsperError):
    """A model file that cannot be loaded, or holds no model."""


def load_model_file(path: str | Path) -> tuple[nn.Module, torch.Tensor | None]:
    """The model a file defines: `build_model()`, a module-level `model`, or the one
    nn.Module subclass defined there that needs no arguments. Also its `example_input`."""
    path = Path(path)
    if not path.is_file():
        raise HostFileError(f"no such model file: {path}")
    spec = importlib.util.spec_from_file_location(f"esper_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise HostFileError(f"{path} failed to import: {type(e).__name__}: {e}") from e
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
        raise HostFileError(f"{path}: build_model() returned {type(model).__name__}, not an nn.Module")
    return model, example if isinstance(example, torch.Tensor) else None


def _only_module_class(module, path: Path) -> type:
    classes = [
        c
        for c in vars(module).values()
        if inspect.isclass(c) and issubclass(c, nn.Module) and c.__module__ == module.__name__ and _needs_no_arguments(c)
    ]
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise HostFileError(
            f"{path} holds no model: define build_model(), a module-level `model`, or exactly one "
            f"nn.Module subclass that needs no arguments (found: {found})"
        )
    return classes[0]


def _needs_no_arguments(cls: type) -> bool:
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def host_factory_of(host: nn.Module, declared: str | None = None) -> str | None:
    """How to build a fresh copy of `host`: the declared factory, else the host's class
    when it is importable and needs no arguments."""
    if declared:
        return declared
    cls = type(host)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__ or not _needs_no_arguments(cls):
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def build_host(factory: str) -> nn.Module:
    """Call a factory named 'package.module:callable' or 'path/to/file.py:build_model'."""
    target, _, name = factory.rpartition(":")
    if target.endswith(".py"):
        return load_model_file(target)[0]
    obj = importlib.import_module(target)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj()
