"""`esper instrument`, `grow` and `export` on a transformer and text, as a user runs them (in-process)."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import torch
import yaml

from esper.cli.main import main
from tests.helpers import ROOT

GPT = str(ROOT / "examples/tiny_gpt.py")
SMALL = ["--context", "16", "--limit", "200", "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("".join(f"{i} green bottles hanging on the wall.\n" for i in range(100, 0, -1)), encoding="utf-8")
    return path


def test_instrument_says_whether_the_host_is_causal(capsys, tmp_path):
    assert main(["instrument", GPT, "--blueprints", "--out", str(tmp_path / "gpt.yaml")]) == 0
    out = capsys.readouterr().out
    assert "causal along the sequence (probed): only causal-safe blueprints (causal_attention, lora, mlp, norm)" in out
    assert "blocks.3: causal_attention 16,768, lora 1,024, mlp 33,216, norm 192" in out  # no bidirectional attention offered
    assert yaml.safe_load((tmp_path / "gpt.yaml").read_text())["causal"] is True
    assert main(["instrument", GPT, "--json", "--spec", str(tmp_path / "gpt.yaml"), "--out", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["causal"] is True
    assert main(["instrument", str(ROOT / "examples/host_cnn.py"), "--out", "-"]) == 0
    assert "no sequence axis in the input: every blueprint may grow" in capsys.readouterr().out


def test_grow_on_text_reports_bits_per_character_and_exports_any_length(corpus, tmp_path, capsys):
    out = tmp_path / "gpt"
    args = [
        "grow",
        "--host",
        GPT,
        "--data",
        f"text:{corpus}",
        "--epochs",
        "2",
        "--decisions-per-epoch",
        "4",
        "--out",
        str(out),
        "--baseline",
        *SMALL,
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "sequences of 16 characters" in printed and "bits per character" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "next_token" and summary["unit"] == "character" and summary["baseline"]["test_loss"] > 0
    report = (out / "report.md").read_text()
    assert "| test loss per character |" in report and "bits per character" in report and (out / "loss.png").stat().st_size > 0
    germinated = [e for e in yaml.safe_load((out / "edits.yaml").read_text()) if e["op"] == "GERMINATE"]
    assert germinated and all(e["blueprint"] != "attention" and e["blend"] != "gated" for e in germinated)

    pt2 = tmp_path / "gpt.pt2"
    assert main(["export", str(out / "model"), "--host", GPT, "--out", str(pt2), "--finalize", "fossilize"]) == 0
    program = torch.export.load(str(pt2)).module()
    for batch, length in ((1, 5), (3, 16), (2, 40)):
        assert program(torch.randint(0, 50, (batch, length))).shape == (batch, length, 256)


@pytest.mark.parametrize("example", ["hf_gpt2.py", "hf_llama.py"])
def test_the_huggingface_examples_grow(example, corpus, tmp_path):
    args = [
        "grow",
        "--host",
        str(ROOT / "examples" / example),
        "--data",
        f"text:{corpus}",
        "--epochs",
        "1",
        "--decisions-per-epoch",
        "2",
        "--out",
        str(tmp_path / "hf"),
        *SMALL,
    ]
    assert main(args) == 0
    summary = json.loads((tmp_path / "hf" / "summary.json").read_text())
    assert summary["task"] == "next_token" and 0 < summary["test_acc"] <= 1


def test_the_readme_transformer_command_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    command = next(c for c in re.findall(r"```bash\n(.*?)```", readme, re.S) if "tiny_gpt.py" in c and " grow " in c)
    args = shlex.split(command)[1:]
    args[args.index("--out") + 1] = str(tmp_path / "gpt")
    monkeypatch.chdir(ROOT)  # the command names README.md and the example relative to the repository
    assert main([*args, "--epochs", "1", "--limit", "64", "--context", "16", "--no-progress"]) == 0  # shortened: later options win
    assert json.loads((tmp_path / "gpt" / "summary.json").read_text())["data"] == "README.md (characters)"


@pytest.mark.parametrize(
    "data, extra, needle",
    [
        ("text:no/such.txt", [], "no text file at no/such.txt"),
        ("text:CORPUS", ["--context", "2000"], "too few for a context of 2000"),
        ("text:CORPUS", ["--context", "128"], "the host fails on the data's token sequences (2, 128)"),  # past TinyGPT's 64 positions
        ("seq-synthetic", ["--context", "10"], "multiple of 4"),
    ],
)
def test_bad_sequence_data_is_one_usage_line(corpus, tmp_path, capsys, data, extra, needle):
    args = ["grow", "--host", GPT, "--data", data.replace("CORPUS", str(corpus)), "--out", str(tmp_path / "x"), "--no-progress", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
