"""No silent surprises: what the command line used to do quietly (overwrite a run, start afresh
on --resume, skip a misspelt name, shrink the test split, dump torch's output, ...) it now
refuses or says, each in one line."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from types import SimpleNamespace

import pytest
import torch

import esper
from esper.cli.main import main
from esper.leyline import SeedStage
from tests.cli.hosts import HOST

# fx cannot trace the branch on a tensor's value, and torch.export fails on it too.
UNTRACEABLE = """
import torch
from torch import nn


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:
            x = x * 2
        return self.head(x.mean(dim=(2, 3)))


def build_model():
    return Branchy()
"""

TINY = ["--data", "synthetic", "--limit", "120", "--batch-size", "32", "--no-progress"]
# The heuristic with its cull rules relaxed (a probe of a dozen images is noise): in four
# epochs it germinates, and the episode tends to end before its seed has finished.
KEEP = "heuristic: {tolerance: 1.0, decline: 1.0}\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    (d / "small.py").write_text(HOST)
    (d / "branchy.py").write_text(UNTRACEABLE)
    (d / "keep.yaml").write_text(KEEP)
    return d


@pytest.fixture(scope="module")
def grown(files, tmp_path_factory):
    """One `esper grow` run: (its directory, what it printed)."""
    out = tmp_path_factory.mktemp("runs") / "grown"
    settings = ["--host", str(files / "small.py"), "--config", str(files / "keep.yaml"), "--epochs", "4"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["grow", *settings, "--out", str(out), *TINY])
    assert code == 0
    return out, printed.getvalue()


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---- 1. --out: a run already there is refused, replaced only with --overwrite


def test_grow_refuses_a_used_out_and_overwrite_replaces_it(grown, files, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(grown[0], out)
    (out / "stale.txt").write_text("from an older run")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    args = ["grow", "--host", str(files / "small.py"), "--epochs", "1", "--out", str(out), *TINY]
    assert main(args) == 2
    err = _error(capsys)
    assert f"--out {out} is not empty" in err and "--overwrite" in err and "nothing was changed" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1


def test_overwrite_replaces_only_a_run_directory(files, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["grow", "--host", str(files / "small.py"), "--out", str(mine), "--overwrite", *TINY]) == 2
    assert "not an esper run" in _error(capsys) and (mine / "thesis.tex").read_text() == "years of work"


def test_train_refuses_a_used_out_unless_resumed_or_overwritten(files, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"kind": "from an older run"}\n')
    args = ["train", "--host", str(files / "small.py"), "--episodes", "1", "--envs", "1", "--epochs", "1", "--out", str(out), *TINY]
    assert main(args) == 2
    err = _error(capsys)
    assert str(out) in err and "--overwrite" in err
    assert main([*args, "--overwrite", "--resume"]) == 2
    assert "pass one of them" in _error(capsys)
    assert main([*args, "--overwrite"]) == 0
    assert "older run" not in (out / "metrics.jsonl").read_text() and (out / "tamiyo.pt").is_file()


def test_an_empty_out_directory_is_used(files, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["grow", "--host", str(files / "small.py"), "--epochs", "1", "--policy", "wait", "--out", str(out), *TINY]) == 0


# ---- 2. --resume with nothing to resume is an error, not a fresh start


@pytest.mark.parametrize("made", [False, True])
def test_resume_without_a_checkpoint_is_an_error(files, tmp_path, capsys, made):
    out = tmp_path / "nonexist"
    if made:
        out.mkdir()
    assert main(["train", "--host", str(files / "small.py"), "--resume", "--out", str(out), *TINY]) == 2
    err = _error(capsys)
    assert f"--resume: {out} has no checkpoint.pt to resume from" in err
    assert ("no such directory" if not made else "the directory is empty") in err
    assert out.exists() == made and (not made or not any(out.iterdir()))


# ---- 3. unknown names are errors naming the setting and the known names


@pytest.mark.parametrize(
    "yaml_text, field, bad, known",
    [
        ("heuristic:\n  blueprint_preference: [conv_enhanse]\n", "heuristic.blueprint_preference", "conv_enhanse", "conv_enhance"),
        ("blueprints: [norm, atention]\n", "blueprints", "atention", "attention"),
        ("blends: [sigmoid, cosine]\n", "blends", "cosine", "sigmoid"),
        ("env:\n  fossils: {block1: lorra}\n", "env.fossils", "lorra", "lora"),
        ("env:\n  seed_lr_rule: peek\n", "env.seed_lr_rule", "peek", "peak"),
        ("ppo:\n  entropy_coef: {blueprnt: 0.02}\n", "ppo.entropy_coef", "blueprnt", "blueprint"),
    ],
)
def test_an_unknown_name_in_a_config_names_its_setting(yaml_text, field, bad, known, files, tmp_path, capsys):
    config = tmp_path / "settings.yaml"
    config.write_text(yaml_text)
    out = tmp_path / "o"
    assert main(["grow", "--host", str(files / "small.py"), "--config", str(config), "--epochs", "1", "--out", str(out), *TINY]) == 2
    err = _error(capsys)
    assert err.startswith(f"esper grow: error: {field}: unknown") and f"'{bad}'" in err, err
    assert known in err.split("known")[-1], err
    assert not out.exists()


# ---- 4. --limit is training images only; grow says what each split holds


def test_limit_is_training_images_and_grow_prints_the_splits(grown, capsys):
    _, printed = grown
    assert "synthetic: train 108, validation 12, test 2,000 images" in printed
    with pytest.raises(SystemExit):
        main(["grow", "--help"])
    assert "test split is always used whole" in " ".join(capsys.readouterr().out.split())


# ---- 5. an untraceable model: esper's message alone, torch's dump only with --verbose


def test_an_untraceable_model_prints_esper_error_alone(files, capfd):
    assert main(["instrument", str(files / "branchy.py"), "--out", "-"]) == 2
    captured = capfd.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert captured.err.startswith("esper instrument: error: could not trace Branchy with torch.fx")
    assert main(["instrument", str(files / "branchy.py"), "--out", "-", "--verbose"]) == 2
    verbose = capfd.readouterr().err
    assert "def forward" in verbose and verbose.strip().splitlines()[-1] == captured.err.strip()


def test_the_python_api_keeps_the_dump_on_the_error(files):
    from esper.kasmina.hosts import load_model_file

    model, _ = load_model_file(str(files / "branchy.py"))
    with pytest.raises(esper.TraceError) as info:
        esper.instrument(model, (torch.randn(1, 3, 8, 8),))
    assert "def forward" in info.value.torch_output and "def forward" not in str(info.value)


# ---- 6. one-liners that say what is wrong


def test_a_missing_data_path_is_no_such_file(files, tmp_path, capsys):
    args = ["grow", "--host", str(files / "small.py"), "--data", "/nope/cifar.tar.gz", "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(args) == 2
    err = _error(capsys)
    assert "no such file: /nope/cifar.tar.gz" in err and "unknown dataset" not in err


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--epochs", "0", "--epochs must be at least 1, got 0"),
        ("--batch-size", "-4", "--batch-size must be at least 1, got -4"),
        ("--decisions-per-epoch", "0", "--decisions-per-epoch must be at least 1, got 0"),
        ("--limit", "0", "--limit must be at least 1, got 0"),
        ("--lr", "0", "--lr must be above 0, got 0.0"),
    ],
)
def test_a_count_out_of_range_names_its_flag_and_value(flag, value, says, files, tmp_path, capsys):
    assert main(["grow", "--host", str(files / "small.py"), "--out", str(tmp_path / "o"), "--no-progress", flag, value]) == 2
    assert says in _error(capsys)


def test_export_finds_the_model_of_a_run_directory(grown, files, tmp_path, capsys):
    run, _ = grown
    target = tmp_path / "m.pt2"
    assert main(["export", str(run), "--host", str(files / "small.py"), "--finalize", "cull", "--out", str(target)]) == 0
    assert f"exporting its model, {run / 'model'}" in capsys.readouterr().out and target.is_file()


def test_export_of_a_directory_without_a_checkpoint_says_where_one_is(tmp_path, capsys):
    train_run = tmp_path / "trained"
    train_run.mkdir()
    (train_run / "tamiyo.pt").write_bytes(b"")
    assert main(["export", str(train_run), "--out", str(tmp_path / "m.pt2")]) == 2
    assert "is an `esper train` run" in _error(capsys)
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pt2")]) == 2
    assert f"no such checkpoint directory: {tmp_path / 'nowhere'}" in _error(capsys)


# ---- 7. --version


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"esper {esper.__version__}"
    assert esper.__version__[0].isdigit()


# ---- 8. the closing line names the seeds left unfinished


def test_the_closing_line_names_unfinished_seeds():
    from esper.cli.grow import seed_outcome

    slots = {
        "block1": SimpleNamespace(stage=SeedStage.FOSSILIZED, blueprint="norm"),
        "block2": SimpleNamespace(stage=SeedStage.BLENDING, blueprint="depthwise"),
        "block3": SimpleNamespace(stage=SeedStage.GERMINATED, blueprint="lora"),
        "block4": SimpleNamespace(stage=SeedStage.DORMANT, blueprint=None),
    }
    line = seed_outcome({"fossilized": 1, "fossil_blueprints": ["norm"]}, SimpleNamespace(slots=slots))
    assert line == "1 seed(s) fossilized (norm), 2 left unfinished (block2 depthwise BLENDING, block3 lora GERMINATED)"
    none_left = {"block1": slots["block1"]}
    assert seed_outcome({"fossilized": 1, "fossil_blueprints": ["norm"]}, SimpleNamespace(slots=none_left)) == "1 seed(s) fossilized (norm)"


def test_grow_says_which_seeds_the_episode_ended_before_they_finished(grown):
    run, printed = grown
    model = esper.load(run / "model", trust_host_code=True)
    unfinished = [
        f"{i} {s.blueprint} {s.stage.name}" for i, s in model.plane.slots.items() if s.stage.name in ("GERMINATED", "TRAINING", "BLENDING")
    ]
    closing = next(line for line in printed.splitlines() if "fossilized" in line)
    for seed in unfinished:
        assert seed in closing, closing
    assert ("left unfinished" in closing) == bool(unfinished)


def test_a_run_too_short_to_fossilize_says_so_in_one_line(files, tmp_path, capsys):
    args = ["grow", "--host", str(files / "small.py"), "--out", str(tmp_path / "short"), *TINY]
    assert main([*args, "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "esper grow: warning: a growth run of 2 decisions cannot fossilize any seed" in err and "decisions_per_epoch" in err
    assert "ShortRunWarning" not in err and ".py:" not in err  # the message alone, not Python's location line
    assert main([*args, "--epochs", "4", "--overwrite"]) == 0
    assert "warning" not in capsys.readouterr().err  # four decisions fit a whole lifecycle
