"""Every user mistake is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import esper
from esper.cli.main import main
from esper.leyline import EditError, Op
from esper.runs import config as config_io
from esper.simic.training import TrainConfig
from tests.helpers import ROOT, HostCNN
from tests.reliability.checkpoints import grown

HOST = str(ROOT / "examples/host_cnn.py")
GROW = ["grow", "--policy", "heuristic", "--host", HOST, "--limit", "60", "--epochs", "1", "--no-progress"]


def _images(folder: Path, n: int = 2) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """One file or folder per mistake."""
    d = tmp_path_factory.mktemp("mistakes")
    (d / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (d / "nothing.yaml").write_text("include: ['no_such_block*']\n")
    (d / "tagged.yaml").write_text("include: !!python/name:os.system\n")
    (d / "notgzip.tar.gz").write_text("not a gzip file\n")
    (d / "notzip.zip").write_text("not a zip file\n")
    _images(d / "one" / "cats")
    _images(d / "corrupt" / "cats")
    _images(d / "corrupt" / "dogs")
    (d / "corrupt" / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    run = d / "run"
    run.mkdir()
    config_io.save_yaml(TrainConfig(host=HOST, limit=60).resolved(), run / "config.yaml")
    torch.save({"format": "esper-train-checkpoint", "pad": torch.zeros(1000)}, run / "checkpoint.pt")
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    grown(d)
    (d / "adir").mkdir()
    return d


CASES = {
    "max slots zero": (["instrument", HOST, "--max-slots", "0"], "max_slots"),
    "max slots negative": (["instrument", HOST, "--max-slots", "-2"], "max_slots"),
    "input out of memory": (["instrument", HOST, "--input-shape", "1,3,100000,100000"], "out of memory: the input alone takes 120.0 GB"),
    "input of the wrong rank": (
        ["instrument", HOST, "--input-shape", "1,3,32"],
        "--input-shape 1,3,32: HostCNN fails on the example input",
    ),
    "input of the wrong channels": (["instrument", HOST, "--input-shape", "1,4,32,32"], "to have 3 channels"),
    "spec that matches nothing": (["instrument", HOST, "--spec", "{d}/nothing.yaml"], "selects none"),
    "spec with a YAML tag": (["instrument", HOST, "--spec", "{d}/tagged.yaml"], "not plain YAML"),
    "model file that exits": (["instrument", "{d}/exits.py"], "sys.exit(3)"),
    "tar.gz that is not gzip": ([*GROW, "--data", "{d}/notgzip.tar.gz"], "cannot be unpacked as a tar archive"),
    "zip that is not a zip": ([*GROW, "--data", "{d}/notzip.zip"], "cannot be unpacked as a zip archive"),
    "corrupt image": ([*GROW, "--data", "{d}/corrupt"], "broken.png is not a readable image"),
    "one class": ([*GROW, "--data", "{d}/one"], "one class only (cats)"),
    "resume a truncated checkpoint": (["train", "--resume", "--episodes", "1", "--no-progress"], "truncated"),
    "export over a directory": (["export", "{d}/ck", "--host", HOST, "--finalize", "cull", "--out", "{d}/adir"], "is a directory"),
}


def _args(case: str, d: Path, out: Path) -> list[str]:
    args = [a.replace("{d}", str(d)) for a in CASES[case][0]]
    if args[0] == "instrument":
        args += ["--out", "-"]
    if args[0] == "grow":
        args += ["--out", str(out), "--data-root", str(out.parent / "cache")]
    if args[0] == "train":
        args += ["--out", str(d / "run")]
    return args


def _check(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert needle in err, err


@pytest.mark.parametrize("case", CASES)
def test_one_line_and_exit_2(case, inputs, tmp_path, capfd):
    code = main(_args(case, inputs, tmp_path / "out"))
    _check(code, capfd.readouterr().err, CASES[case][1])
    if "--data" in CASES[case][0]:
        assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*")), "an empty cache folder was left"


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_one_line_and_exit_2_from_the_shell(case, inputs, tmp_path):
    r = subprocess.run([sys.executable, "-m", "esper", *_args(case, inputs, tmp_path / "out")], capture_output=True, text=True)
    _check(r.returncode, r.stderr, CASES[case][1])


def test_a_file_that_exits_is_reported_by_the_command_itself(inputs):
    r = subprocess.run([sys.executable, "-m", "esper", "instrument", str(inputs / "exits.py")], capture_output=True, text=True)
    _check(r.returncode, r.stderr, "sys.exit(3)")


def test_what_a_model_file_prints_stays_out_of_json(tmp_path, capsys):
    noisy = tmp_path / "noisy.py"
    noisy.write_text(
        f"print('hello from the model file')\nimport sys\n"
        f"sys.path.insert(0, {str(ROOT / 'examples')!r})\nfrom host_cnn import build_model\n"
    )
    assert main(["instrument", str(noisy), "--json", "--out", "-"]) == 0
    captured = capsys.readouterr()
    assert [s["id"] for s in json.loads(captured.out)["slots"]] == ["block1", "block2", "block3"]
    assert "hello from the model file" in captured.err


def test_a_zero_step_schedule_is_refused_not_replaced():
    mm = esper.instrument(HostCNN(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(EditError, match="steps .* must be an integer >= 1, not 0"):
        mm.plane.germinate("block1", "norm", steps=0)
    assert mm.plane.slots["block1"].stage.name == "DORMANT" and mm.plane.edits == []


def test_an_op_given_as_a_string_is_converted_or_refused_clearly():
    assert esper.Edit("germinate", "block1", "norm").op is Op.GERMINATE
    assert esper.Edit("FOSSILIZE", "block1").op is Op.FOSSILIZE
    with pytest.raises(EditError, match="unknown op 'grow': use one of WAIT, GERMINATE"):
        esper.Edit("grow", "block1")
