"""Checkpoints: same outputs, identical continued training, clear errors, no pickles."""

import copy
import pickle

import pytest
import torch
import yaml
from safetensors import safe_open

import esper
from esper.leyline import CheckpointError
from tests.helpers import HostCNN, TinyGPT


def _grown():
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 32, 32),))
    p = mm.plane
    p.germinate("block1", "depthwise", blend="gated", steps=3)
    p.advance("block1"), p.advance("block1")
    p.germinate("block3", "attention", blend="sigmoid", steps=4)
    p.advance("block3")
    p.germinate("block2", "conv_enhance", steps=1)
    p.advance("block2"), p.advance("block2")
    p.step()
    p.fossilize("block2")
    p.step()
    opt = torch.optim.SGD(mm.parameters(), lr=0.05)
    p.attach_optimizer(opt)
    for _ in range(2):
        opt.zero_grad()
        mm(torch.randn(4, 3, 32, 32)).square().mean().backward()
        opt.step()
    return mm


def _train(mm, steps=3):
    torch.manual_seed(7)
    opt = torch.optim.SGD(mm.parameters(), lr=0.05, momentum=0.9)
    mm.plane.attach_optimizer(opt)
    mm.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(mm(x), torch.randint(0, 10, (4,))).backward()
        mm.plane.guard()
        opt.step()
        mm.plane.step()
    return mm


def test_round_trip_outputs_and_continued_training(tmp_path):
    mm = _grown()
    esper.save(mm, tmp_path / "ck")
    loaded = esper.load(tmp_path / "ck", host=HostCNN())
    assert [(i, s.stage, s.alpha) for i, s in loaded.plane.slots.items()] == [(i, s.stage, s.alpha) for i, s in mm.plane.slots.items()]
    assert loaded.plane.edits == mm.plane.edits and loaded.plane.ticks == mm.plane.ticks
    x = torch.randn(3, 3, 32, 32)
    mm.eval(), loaded.eval()
    assert torch.equal(mm(x), loaded(x))
    a, b = _train(copy.deepcopy(mm)), _train(loaded)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


def test_factory_from_the_host_class_and_tied_weights(tmp_path):
    torch.manual_seed(0)
    gpt = TinyGPT(depth=2)
    gpt.head.weight = gpt.tok.weight  # tied: stored once
    mm = esper.instrument(gpt, (torch.randint(0, 256, (2, 8)),))
    mm.plane.germinate("blocks.0", "lora", steps=1)
    esper.save(mm, tmp_path / "gpt")
    loaded = esper.load(tmp_path / "gpt", host=_tied())
    assert loaded.head.weight is loaded.tok.weight
    x = torch.randint(0, 256, (2, 8))
    assert torch.equal(loaded.eval()(x), mm.eval()(x))
    with safe_open(str(tmp_path / "gpt" / "tensors.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert len({"head.weight", "tok.weight"} & stored) == 1  # the tie is written once
    assert len(stored) == len(set(mm.state_dict())) - 1
    # The alias alone restores the second name: an untied host gets the same values in both.
    untied = esper.load(tmp_path / "gpt", host=TinyGPT(depth=2))
    assert untied.head.weight is not untied.tok.weight and torch.equal(untied.head.weight, gpt.tok.weight)
    cnn = esper.instrument(HostCNN(), (torch.randn(1, 3, 16, 16),))
    esper.save(cnn, tmp_path / "cnn")
    with pytest.raises(CheckpointError, match="host_cnn:HostCNN"):
        esper.load(tmp_path / "cnn")  # the factory is code: not run untrusted
    assert esper.load(tmp_path / "cnn", trust_host_code=True).host.__class__.__name__ == "HostCNN"


def _tied():
    g = TinyGPT(depth=2)
    g.head.weight = g.tok.weight
    return g


def test_the_files_are_safetensors_and_yaml_and_nothing_is_unpickled(tmp_path, monkeypatch):
    mm = _grown()
    esper.save(mm, tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["manifest.yaml", "tensors.safetensors"]

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    # Every way in to pickle, torch.load's included (it looks up pickle.Unpickler when called).
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    safe_yaml = yaml.load

    def only_safe_yaml(stream, Loader):
        assert issubclass(Loader, yaml.SafeLoader), Loader  # a full loader can build Python objects
        return safe_yaml(stream, Loader)

    monkeypatch.setattr(yaml, "load", only_safe_yaml)
    loaded = esper.load(tmp_path / "ck", host=HostCNN())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.eval()(x), mm.eval()(x))


def test_truncated_or_tampered_checkpoints_are_refused(tmp_path):
    esper.save(_grown(), tmp_path / "ck")
    blob = tmp_path / "ck" / "tensors.safetensors"
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or was modified"):
        esper.load(tmp_path / "ck", host=HostCNN())
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="truncated or was modified"):
        esper.load(tmp_path / "ck", host=HostCNN())
    with pytest.raises(CheckpointError, match="not an esper checkpoint"):
        esper.load(tmp_path / "nowhere")
    (tmp_path / "ck" / "manifest.yaml").write_text("format: something-else\n")
    with pytest.raises(CheckpointError, match="unknown format"):
        esper.load(tmp_path / "ck", host=HostCNN())


def test_a_host_without_a_factory_must_be_given(tmp_path):
    class Local(HostCNN):
        pass

    mm = esper.instrument(Local(), (torch.randn(1, 3, 16, 16),))
    esper.save(mm, tmp_path / "ck")
    with pytest.raises(CheckpointError, match="pass host="):
        esper.load(tmp_path / "ck")


def test_a_host_that_is_not_the_one_grown_from_is_named_with_both_sizes(tmp_path):
    mm = esper.instrument(HostCNN(width=16), (torch.randn(1, 3, 16, 16),))
    mm.plane.germinate("block2", "depthwise", steps=1)
    esper.save(mm, tmp_path / "cnn")
    with pytest.raises(CheckpointError, match=r"grown from a HostCNN holding [\d,]+ host values.*is a HostCNN holding [\d,]+"):
        esper.load(tmp_path / "cnn", host=HostCNN(width=8))  # same class, another width
    with pytest.raises(CheckpointError, match="grown from a HostCNN .* the host passed is a TinyGPT"):
        esper.load(tmp_path / "cnn", host=TinyGPT(depth=2))
    assert esper.load(tmp_path / "cnn", host=HostCNN(width=16)).plane.slot("block2").blueprint == "depthwise"
