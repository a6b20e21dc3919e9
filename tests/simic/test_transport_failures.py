"""A failure to communicate is told from a training step's own error by its type where torch
types it, and by gloo's words only where gloo raises a plain RuntimeError."""

from __future__ import annotations

import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist

from esper.leyline import DistributedError
from esper.simic.distributed import Ranks, collective, is_transport_failure

TWO = Ranks(rank=1, world_size=2, timeout=10)


@pytest.mark.parametrize("name", ["DistError", "DistBackendError", "DistNetworkError", "DistStoreError"])
def test_torchs_typed_errors_are_transport_failures_whatever_they_say(name):
    assert is_transport_failure(getattr(dist, name)("ncclInvalidUsage: an internal check failed"))


@pytest.mark.parametrize(
    "text",
    [
        "[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:6339",
        "[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation to complete",
        "Application timeout caused pair closure",
    ],
)
def test_what_gloo_raises_when_a_peer_is_gone_or_late_is_a_transport_failure(text):
    assert is_transport_failure(RuntimeError(text))


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x2)"),
        ValueError("the step's own timeout setting is wrong"),  # gloo's words, but gloo raises RuntimeError
        KeyError("peer"),
    ],
)
def test_a_steps_own_error_is_not(error):
    assert not is_transport_failure(error)


def test_a_step_run_as_a_collective_passes_its_own_errors_through_and_names_transport_failures():
    def fails(error):
        def fn():
            raise error

        return fn

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        collective(TWO, "a step", fails(RuntimeError("shapes cannot be multiplied")), only_transport=True)
    with pytest.raises(DistributedError, match=r"rank 1 of 2: a step failed: .* within 10 s \(DistBackendError: lost"):
        collective(TWO, "a step", fails(dist.DistBackendError("lost")), only_transport=True)


def _lose_a_peer(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=20))
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    if rank == 1:
        os._exit(0)  # gone without a word, as a crashed rank is
    time.sleep(1)
    try:
        model(torch.randn(2, 4)).sum().backward()  # the gradient all-reduce finds the peer gone
        out.put(("no error", "", None))
    except Exception as e:
        out.put((type(e).__name__, str(e), is_transport_failure(e)))


def test_what_gloo_raises_in_a_ddp_backward_whose_peer_died_is_a_transport_failure():
    ctx = torch.multiprocessing.get_context("spawn")
    out = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_lose_a_peer, args=(rank, port, out)) for rank in range(2)]
    for p in procs:
        p.start()
    name, text, verdict = out.get(timeout=120)
    for p in procs:
        p.join(timeout=30)
    assert verdict is True, f"{name}: {text}"
