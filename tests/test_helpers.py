"""The shared comparison is strict: the bit-for-bit tests lean on it."""

import pytest
import torch

from tests.helpers import default_dtype, named, outputs_equal


def test_outputs_equal_sees_a_missing_element_key_or_tensor():
    t = torch.arange(4.0)
    assert outputs_equal((t, {"a": t, "b": [t, 1]}), (t.clone(), {"a": t.clone(), "b": [t.clone(), 1]}))
    assert not outputs_equal((t, t), (t,))  # a shorter output
    assert not outputs_equal((t,), (t, t))
    assert not outputs_equal({"a": t}, {"a": t, "b": t})  # an extra key in the second
    assert not outputs_equal({"a": t, "b": t}, {"a": t})
    assert not outputs_equal([t], [t + 1e-6])
    assert not outputs_equal(t, t[:2]) and not outputs_equal(t, (t,))


def test_named_keeps_torchs_report_and_default_dtype_restores():
    with pytest.raises(AssertionError, match=r"w: Tensor-likes are not close!(.|\n)*Greatest absolute difference: 0\.5"):
        torch.testing.assert_close(torch.zeros(2), torch.tensor([0.0, 0.5]), msg=named("w"))
    before = torch.get_default_dtype()
    with pytest.raises(RuntimeError), default_dtype(torch.float64):
        assert torch.zeros(1).dtype == torch.float64
        raise RuntimeError
    assert torch.get_default_dtype() == before
