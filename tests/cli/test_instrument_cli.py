"""`esper instrument` on files, as a user runs it."""

import json
import subprocess
import sys

import yaml

from tests.helpers import ROOT


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "esper", *args], capture_output=True, text=True, cwd=cwd)


def test_table_and_spec_for_the_example_host(tmp_path):
    out = tmp_path / "slots.yaml"
    r = run("instrument", str(ROOT / "examples/host_cnn.py"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "block1" in r.stdout and "(1, 32, 32, 32)" in r.stdout and "traced with fx" in r.stdout
    spec = yaml.safe_load(out.read_text())
    r = run("instrument", str(ROOT / "examples/host_cnn.py"), "--blueprints", "--out", "-")
    assert "block3: attention 8,352, conv_enhance 164,224, depthwise 17,920, norm 384" in r.stdout
    assert [s["id"] for s in spec["slots"]] == ["block1", "block2", "block3"]


def test_json_output_and_options(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"names": {"blocks.0": "early"}}))
    r = run("instrument", str(ROOT / "examples/tiny_gpt.py"), "--json", "--max-slots", "2", "--spec", str(spec), "--out", "-")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["trace"] == "fx" and data["params"] > 0
    assert len(data["slots"]) == 2 and data["slots"][0]["id"] == "early"
    assert data["slots"][0]["target"] == "blocks.0" and data["slots"][0]["shape"][-1] == 64


def test_input_shape_flag(tmp_path):
    r = run("instrument", str(ROOT / "examples/host_cnn.py"), "--input-shape", "2,3,16,16", "--json", "--out", "-")
    assert json.loads(r.stdout)["slots"][0]["shape"] == [2, 32, 16, 16]


def test_bad_files_get_one_line_and_exit_2(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import nonexistent_package_xyz\n")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    for path, needle in ((broken, "failed to import"), (empty, "holds no model"), (tmp_path / "missing.py", "no such model file")):
        r = run("instrument", str(path))
        assert r.returncode == 2
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_a_single_module_class_is_found(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, width=8):\n"
        "        super().__init__()\n"
        "        self.a = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())\n"
        "        self.b = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())\n"
        "        self.c = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())\n"
        "    def forward(self, x):\n"
        "        return self.c(self.b(self.a(x))).mean((2, 3))\n"
    )
    r = run("instrument", str(f), "--json", "--out", "-")
    assert r.returncode == 0, r.stderr
    assert [s["id"] for s in json.loads(r.stdout)["slots"]] == ["a", "b", "c"]
