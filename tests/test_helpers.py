"""The shared comparison is strict: the bit-for-bit tests lean on it."""

import torch

from tests.helpers import outputs_equal


def test_outputs_equal_sees_a_missing_element_key_or_tensor():
    t = torch.arange(4.0)
    assert outputs_equal((t, {"a": t, "b": [t, 1]}), (t.clone(), {"a": t.clone(), "b": [t.clone(), 1]}))
    assert not outputs_equal((t, t), (t,))  # a shorter output
    assert not outputs_equal((t,), (t, t))
    assert not outputs_equal({"a": t}, {"a": t, "b": t})  # an extra key in the second
    assert not outputs_equal({"a": t, "b": t}, {"a": t})
    assert not outputs_equal([t], [t + 1e-6])
    assert not outputs_equal(t, t[:2]) and not outputs_equal(t, (t,))
