"""Instrumenting runs the host in eval mode and hands it back with every module in the mode it had."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import esper
from esper.cli.runs import check_host_fits
from esper.data.splits import load_data
from esper.graph import eval_mode, train_mode
from esper.leyline import InputError
from tests.graph.test_tracing import TrainOnlyNoise
from tests.helpers import HostCNN


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def test_the_block_switches_the_mode_and_restores_each_module_even_on_an_error():
    model = HostCNN()
    model.block1.eval()  # frozen inside a training model
    before = _modes(model)
    with pytest.raises(RuntimeError, match="inside"), eval_mode(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError("inside")
    assert _modes(model) == before
    with train_mode(model.eval(), True):
        assert all(m.training for m in model.modules())
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize(
    "host, x",
    [
        (TrainOnlyNoise, torch.randn(2, 4, 8)),  # fx, its mode check, export, causality probe, hooks
        (HostCNN, torch.randn(2, 3, 16, 16)),  # fx
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_instrumenting_leaves_every_module_in_its_mode(host, x, training):
    model = host().train(training)
    frozen = next(m for name, m in model.named_modules() if name.count(".") == 1)
    frozen.train(not training)
    before = _modes(model)
    mm = esper.instrument(model, (x,))
    assert _modes(model) == before
    assert mm.training == training


def test_a_trace_that_fails_on_the_example_leaves_the_modes():
    model = HostCNN().train()
    model.block2.eval()
    before = _modes(model)
    with pytest.raises(InputError):
        esper.instrument(model, (torch.randn(2, 5, 16, 16),))  # five channels: the first conv wants three
    assert _modes(model) == before


def test_checking_a_host_on_the_data_leaves_the_modes():
    data = load_data("synthetic", limit=20, progress=False)
    model = HostCNN().train()
    model.block3.eval()
    before = _modes(model)
    check_host_fits(model, None, data)
    assert _modes(model) == before
