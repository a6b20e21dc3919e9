import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The policy networks are tiny: intra-op threads only add synchronisation, which on a
    # busy machine makes a small matmul a hundred times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
