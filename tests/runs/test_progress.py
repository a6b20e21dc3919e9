"""Progress on the console: a live bar on a terminal, plain lines (never a carriage return)
in a log file, a pipe or a captured stream."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from esper.runs.metrics import PlainProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_is_live_and_one_in_a_log_writes_plain_lines():
    from tqdm import tqdm

    assert isinstance(progress_bar(total=3, file=Terminal()), tqdm)
    log = io.StringIO()
    bar = progress_bar(total=20, desc="grow (grown)", unit="step", file=log)
    assert isinstance(bar, PlainProgress)
    for i in range(20):
        bar.update(1)
        bar.set_postfix(val_acc=f"{i / 20:.3f}", edit="WAIT")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 10  # one at each tenth of the way
    assert lines[0].startswith("grow (grown): 2/20 step (10%), ") and lines[0].endswith("val_acc=0.050, edit=WAIT")
    assert lines[-1].startswith("grow (grown): 20/20 step (100%), ") and lines[-1].endswith("val_acc=0.950, edit=WAIT")


def test_a_plain_bar_iterates_says_the_last_count_and_can_be_silenced():
    log = io.StringIO()
    assert list(progress_bar(range(3), desc="decoding train", unit="img", file=log)) == [0, 1, 2]
    assert log.getvalue().splitlines()[-1].startswith("decoding train: 3/3 img (100%)")
    log = io.StringIO()
    with progress_bar(desc="unpacking a.zip", unit="file", file=log) as bar:  # no total: a line at the end
        bar.update()
        bar.update()
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unpacking a.zip: 2 file, ")
    quiet = io.StringIO()
    assert list(progress_bar(range(3), file=quiet, disable=True)) == [0, 1, 2] and quiet.getvalue() == ""


def test_decoding_an_image_folder_into_a_log_writes_no_carriage_return(tmp_path, capsys):
    from esper.data.images import image_folder

    for cls in ("cat", "dog"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "tree" / cls / f"{i}.png")
    raw = image_folder(tmp_path / "tree", tmp_path / "cache", progress=True)
    assert raw.classes == ["cat", "dog"]
    err = capsys.readouterr().err
    assert "\r" not in err and "decoding all: 6/6 img (100%)" in err


@pytest.mark.filterwarnings("ignore:a growth run of")  # a short run is all this needs
def test_esper_train_into_a_log_writes_plain_lines(tmp_path, capsys):
    from esper.simic.training import Trainer
    from tests.simic.toys import TinyCNN, tiny_config, toy_data

    Trainer(tiny_config(), tmp_path / "run", TinyCNN(), toy_data(), progress=True, log=lambda s: None).run()
    err = capsys.readouterr().err
    assert "\r" not in err and "esper train: 2/2 ep (100%)" in err
