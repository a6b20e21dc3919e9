"""Where hosts come from: model files, and factories a checkpoint can call again.

Both run the user's Python: a model file is code its user chose to run, while a factory
comes from a checkpoint's manifest, so `esper.load` calls one only when trusted to.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from esper.leyline import HostFileError

__all__ = ["HostFileError", "build_host", "host_factory_of", "load_model_file", "reinitialized_copies"]

# module name -> the factory that rebuilds what load_model_file built from that file
_FILE_FACTORIES: dict[str, str] = {}


def load_model_file(path: str | Path) -> tuple[nn.Module, torch.Tensor | None]:
    """The model a file defines: `build_model()`, a module-level `model`, or the one
    nn.Module subclass defined there that needs no arguments. Also its `example_input`.

    What the file prints goes to stderr, so that it cannot mix into machine-readable output."""
    path = Path(path)
    if not path.is_file():
        raise HostFileError(f"no such model file: {path}")
    resolved = path.resolve()
    # Unique per file, so that two model.py files in different folders stay apart.
    name = f"esper_user_model_{path.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(resolved.parent))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            _run(path, "failed to import", spec.loader.exec_module, module)
            model, how = _build(module, path)
    finally:
        sys.path.pop(0)
    if not isinstance(model, nn.Module):
        raise HostFileError(f"{path}: {how} gave {type(model).__name__}, not an nn.Module")
    _FILE_FACTORIES[name] = f"{resolved}:{how.removesuffix('()')}"
    example = getattr(module, "example_input", None)
    return model, example if isinstance(example, torch.Tensor) else None


def _run(path: Path | str, failure: str, fn, *args):
    try:
        return fn(*args)
    except SystemExit as e:  # not an Exception, but a file that exits has failed all the same
        raise HostFileError(f"{path} {failure}: it called sys.exit({e.code!r})") from None
    except Exception as e:
        raise HostFileError(f"{path} {failure}: {type(e).__name__}: {e}") from e


def _build(module, path: Path) -> tuple[object, str]:
    """The model and how it was made: 'build_model()', 'model', or 'ClassName()'."""
    if callable(getattr(module, "build_model", None)):
        return _run(path, "failed in build_model()", module.build_model), "build_model()"
    if isinstance(getattr(module, "model", None), nn.Module):
        return module.model, "model"
    cls = _only_module_class(module, path)
    return _run(path, f"failed in {cls.__name__}()", cls), f"{cls.__name__}()"


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
    """How to build a fresh copy of `host`: the declared factory, else the model file it
    was loaded from, else the host's class when it is importable and needs no arguments."""
    if declared:
        return declared
    cls = type(host)
    if cls.__module__ in _FILE_FACTORIES:
        return _FILE_FACTORIES[cls.__module__]
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__ or not _needs_no_arguments(cls):
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def build_host(factory: str) -> nn.Module:
    """Call a factory named 'package.module:callable' or 'path/to/file.py:build_model'
    (a file builds the model as `load_model_file` does). This runs code the factory names."""
    target, _, name = factory.rpartition(":")
    if target.endswith(".py"):
        return load_model_file(target)[0]

    def call():
        obj = importlib.import_module(target)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj()

    model = _run(factory, "failed", call)
    if not isinstance(model, nn.Module):
        raise HostFileError(f"{factory} gave {type(model).__name__}, not an nn.Module")
    return model


def reinitialized_copies(template: nn.Module) -> Callable[[], nn.Module]:
    """A host factory: each call deep-copies `template` and re-runs every submodule's
    `reset_parameters()`, so each episode starts from a fresh random init drawn from the
    current RNG (parameters of modules without reset_parameters keep the template's values)."""

    def build() -> nn.Module:
        host = copy.deepcopy(template)
        for module in host.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.reset_running_stats()
        return host

    return build
