"""`--compile` on `esper grow` and `esper train`: the setting it makes, the error where it
cannot run, and a compiled run's report of what it compiled."""

from __future__ import annotations

import json

import pytest

from esper.cli.main import main
from tests.cli.hosts import HOST

TINY = ["--data", "synthetic", "--limit", "120", "--epochs", "2", "--batch-size", "32", "--no-progress"]


@pytest.fixture
def host(tmp_path):
    path = tmp_path / "small.py"
    path.write_text(HOST)
    return str(path)


@pytest.mark.parametrize("command", ["grow", "train"])
def test_compile_sets_the_environments_setting(command):
    import argparse

    from esper.cli import grow, train
    from esper.cli.runs import build_config

    parser = argparse.ArgumentParser()
    (grow if command == "grow" else train).add_arguments(parser)
    assert build_config(parser.parse_args(["--out", "x", "--compile"])).env.compile
    assert not build_config(parser.parse_args(["--out", "x"])).env.compile


@pytest.mark.parametrize("command", ["grow", "train"])
def test_without_a_cpp_compiler_compile_is_one_line_naming_what_is_missing(command, host, tmp_path, capsys, monkeypatch):
    from torch._inductor import cpp_builder

    def missing():
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    assert main([command, "--host", host, "--out", str(tmp_path / "run"), "--compile", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--compile" in err and "C++ compiler" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_compiled_grow_reports_what_it_compiled(host, tmp_path, capsys):
    # The host alone: one structure, one graph (108 training images in batches of 27).
    out = tmp_path / "run"
    assert main(["grow", "--policy", "wait", "--host", host, "--out", str(out), "--compile", *TINY, "--batch-size", "27"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile"] == {"compiles": 1, "structures": 1, "cudagraph_refusals": 0}
    assert "torch.compile: 1 graph(s) for 1 model structure(s)" in capsys.readouterr().out
