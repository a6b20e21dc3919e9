"""What the trainer callbacks (`hf`, `lightning`) share: a Gardener made when training
begins, from settings given when the callback is built, fed the metrics the trainer logs."""

from __future__ import annotations

from esper.integrations.gardener import Gardener, find_instrumented
from esper.leyline import DistributedError, Edit
from esper.simic.distributed import current


class GardenerCallbackBase:
    """`policy` and `gardener_options` go to `Gardener` (probe, blend_steps, seed_lr_scale...);
    `decisions` overrides the number of decisions the policy is told to expect;
    `metric_names` maps Gardener.step's arguments to the names the trainer logs them under."""

    METRIC_NAMES: dict[str, str] = {}

    def __init__(self, policy="heuristic", *, decisions: int | None = None, metric_names: dict | None = None, **gardener_options):
        self.policy = policy
        self.decisions = decisions
        self.names = {**self.METRIC_NAMES, **(metric_names or {})}
        self.options = gardener_options
        self.gardener: Gardener | None = None

    def _start(self, module, optimizer, scheduler, decisions: int) -> None:
        if current().spread:
            raise DistributedError(
                "the trainer callbacks do not grow under distributed training yet: the trainer builds its "
                "DistributedDataParallel wrapper once, and it would never see a new seed's parameters; "
                "grow with esper.Gardener in your own loop (gardener.data_parallel()) or `torchrun -m esper grow`"
            )
        self.gardener = Gardener(
            find_instrumented(module), self.policy, optimizer=optimizer, scheduler=scheduler, epochs=decisions, **self.options
        )

    def _decide(self, logged) -> Edit | None:
        """One Gardener step on the metrics the trainer logged; past the planned decisions
        (a trainer that evaluates more often than it was expected to) nothing more grows."""
        if self.gardener.done:
            return None
        return self.gardener.step(**{arg: logged.get(name) for arg, name in self.names.items()})
