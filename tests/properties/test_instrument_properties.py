"""Invariants of instrumentation, for random hosts."""

import copy

import torch
from hypothesis import given, settings

import esper
from tests.properties.hosts import random_hosts


@settings(max_examples=20)
@given(random_hosts())
def test_random_hosts_instrument_bit_exact(host):
    model, x = host
    twin = copy.deepcopy(model)
    mm = esper.instrument(model, (x,))
    assert len(mm.plane.slots) >= 1
    assert sum(p.numel() for p in mm.plane.parameters()) == 0
    mm.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(mm(x), twin(x))
    mm.train(), twin.train()
    torch.manual_seed(3)
    a = mm(x)
    torch.manual_seed(3)
    b = twin(x)
    assert torch.equal(a, b)
    a.float().square().mean().backward()
    b.float().square().mean().backward()
    for (name, p), (_, q) in zip(mm.named_parameters(), twin.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), name
