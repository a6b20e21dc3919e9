import os

import torch

# Triton kernels run on the CPU through the interpreter when no GPU is present.
# It must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.helpers import default_dtype  # noqa: E402

settings.register_profile(
    "esper",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("esper")


@pytest.fixture
def float64():
    """Models and inputs in float64: for tests that compare two computations of the same
    thing in different orders (see tests.helpers.default_dtype)."""
    with default_dtype(torch.float64):
        yield
