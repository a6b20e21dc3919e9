"""KasminaPlane: the one owner of every seed slot of a model, and the edit log.

Every lifecycle decision, by hand or by Tamiyo, is an `Edit` applied through
`plane.apply`, which validates it against the Leyline transition table, performs it,
and appends it (with the plane's tick count) to `plane.edits`.

The plane changes slots; the model it is woven into (`GraphHost`, a
MorphogeneticModel) changes the forward pass. One edit crosses between them: a seed that
reaches FOSSILIZED is handed to `graph_host.fold_fossil(slot_id)`, which folds it into
the model's graph and opens a fresh dormant slot after it (`plane.add_slot`).

GERMINATE refuses a blueprint that cannot act at the slot's activation shape
(`esper.kasmina.blueprints.why_unfit`: the wrong rank, or e.g. a 3x3 kernel on a 1x1 map),
with the reason and the blueprints that do fit; no flag overrides it. Replaying an edit log
that grew such a seed under older rules therefore fails at that edit (EditError, same
reason), and so does loading a checkpoint that holds one, rather than silently rebuilding
a seed that cannot help.

On a causal host (`plane.causal`, probed at instrumentation) GERMINATE refuses a
blueprint or blend that is not causal-safe, naming the safe ones, unless the edit says
`allow_noncausal=True`.

Time: `plane.step()` is one tick. Blend schedules (`steps=N` at germination), epochs in
stage and cull cooldowns count ticks. Call it once per epoch (what `esper train` does)
or once per optimizer step, and size `steps` to match.
"""

from __future__ import annotations

import re
import weakref
from contextlib import contextmanager
from types import MappingProxyType
from typing import Protocol

import torch
from torch import nn

from esper.kasmina.blending import blend_names
from esper.kasmina.blueprints import blueprints_for, why_unfit
from esper.kasmina.slot import SeedSlot
from esper.leyline import Edit, LifecycleError, Op, SeedStage, target_stage

S = SeedStage
DEFAULT_BLEND_STEPS = 5


def module_key(slot_id: str) -> str:
    """The submodule name of a slot: ids may contain '.', module names may not."""
    return re.sub(r"\W", "_", slot_id)


class GraphHost(Protocol):
    """What the plane needs from the model whose forward pass it sits in."""

    def parameter_like(self) -> torch.Tensor | None:
        """A tensor whose device and dtype new seeds take (None: CPU, fp32)."""

    def fold_fossil(self, slot_id: str) -> str:
        """Make the fossil in `slot_id` part of the forward pass and open a dormant slot
        after it (through `add_slot`); return the new slot's id."""


class KasminaPlane(nn.Module):
    def __init__(self, slots: list[tuple[str, tuple[int, ...]]], causal: bool = False, graph_host: GraphHost | None = None):
        super().__init__()
        self._causal = causal
        self._defer_culls = False
        self._ids: list[str] = []
        self.edits: list[Edit] = []
        self.ticks = 0  # how many times step() has run: the tick the next edit is logged at
        self._routing = 0
        self._optimizers: list[tuple[weakref.ref, dict]] = []
        # Not a submodule (the model holds the plane, not the other way round), and a
        # plain reference so that deepcopy and pickling carry it to the copy's model.
        object.__setattr__(self, "graph_host", graph_host)
        for slot_id, shape in slots:
            self.add_slot(slot_id, shape)

    # ---- slots ----------------------------------------------------------------------
    def add_slot(self, slot_id: str, shape: tuple[int, ...], after: str | None = None) -> SeedSlot:
        key = module_key(slot_id)
        if slot_id in self._ids or hasattr(self, key):
            raise ValueError(f"slot '{slot_id}' already exists")
        slot = SeedSlot(slot_id, shape)
        slot.on_auto_cull = self._log_auto_cull
        slot.defer_culls = self._defer_culls
        self.add_module(key, slot)
        pos = self._ids.index(after) + 1 if after is not None else len(self._ids)
        self._ids.insert(pos, slot_id)
        return slot

    @property
    def defer_culls(self) -> bool:
        """Whether a seed's non-finite output waits for `guard()` even on the CPU, where it
        could be culled during the forward pass. Set it when the decision must be shared:
        under several processes each rank's seed sees only its share of a batch, so a cull
        on the rank that saw the NaN alone would split the ranks' models."""
        return self._defer_culls

    @defer_culls.setter
    def defer_culls(self, value: bool) -> None:
        self._defer_culls = bool(value)
        for slot in self.slots.values():
            slot.defer_culls = self._defer_culls

    @property
    def slots(self) -> MappingProxyType:
        """Ordered mapping slot id -> SeedSlot, input side first."""
        return MappingProxyType({i: getattr(self, module_key(i)) for i in self._ids})

    def slot(self, slot_id: str) -> SeedSlot:
        if slot_id not in self._ids:
            raise KeyError(f"no slot '{slot_id}'; slots: {', '.join(self._ids)}")
        return getattr(self, module_key(slot_id))

    # ---- edits ----------------------------------------------------------------------
    def apply(self, edit: Edit) -> Edit:
        """Validate, perform and log one edit. Returns the logged edit."""
        if edit.op is Op.WAIT:
            self.edits.append(Edit(Op.WAIT, edit.slot, tick=self.ticks))
            return self.edits[-1]
        slot = self.slot(edit.slot)
        dst = target_stage(edit.slot, slot.stage, edit.op)
        if dst is S.GERMINATED:
            blend = edit.blend or "linear"
            self._refuse_unfit(slot, edit.blueprint)
            if not edit.allow_noncausal:
                self._refuse_noncausal(slot, edit.blueprint, blend)
            steps = DEFAULT_BLEND_STEPS if edit.steps is None else edit.steps
            slot.germinate(edit.blueprint, blend, steps, self._like())
            logged = Edit(Op.GERMINATE, edit.slot, edit.blueprint, blend, steps, self.ticks, edit.allow_noncausal)
            self._attach(slot)
        else:
            if dst is S.FOSSILIZED:
                slot.fossilize()
                if self.graph_host is not None:
                    self.graph_host.fold_fossil(edit.slot)
            elif dst is S.CULLED:
                self._detach(slot)
                slot.cull()
            else:
                slot.enter(dst)
            logged = Edit(edit.op, edit.slot, tick=self.ticks)
        return self._log(logged)

    def _log(self, logged: Edit) -> Edit:
        self.edits.append(logged)
        return logged

    def _log_auto_cull(self, slot: SeedSlot) -> None:
        self._detach(slot)
        self._log(Edit(Op.CULL, slot.slot_id, tick=self.ticks))

    def germinate(
        self, slot_id: str, blueprint: str, blend: str = "linear", steps: int = DEFAULT_BLEND_STEPS, allow_noncausal: bool = False
    ) -> Edit:
        """Grow `blueprint` in a dormant slot. Refused (LifecycleError, with the reason and the
        blueprints that fit) where it cannot act at the slot's shape, and on a causal host
        where it or the blend could see the future, unless `allow_noncausal`."""
        return self.apply(Edit(Op.GERMINATE, slot_id, blueprint, blend, steps, allow_noncausal=allow_noncausal))

    @property
    def causal(self) -> bool:
        """Whether the host is causal along its sequence axis (fixed at instrumentation)."""
        return self._causal

    def _refuse_unfit(self, slot: SeedSlot, blueprint: str) -> None:
        """Refuse a blueprint that cannot act at the slot's shape, naming the ones that can."""
        reason = why_unfit(blueprint, slot.shape)
        if reason is None:
            return
        fits = blueprints_for(slot.shape, causal=self._causal)
        raise LifecycleError(
            slot.slot_id,
            slot.stage,
            f"germinate blueprint '{blueprint}'",
            f"its activations are {'x'.join(map(str, slot.shape[1:]))} per sample, and {reason}; "
            f"blueprints that fit here: {', '.join(fits) or 'none'}",
        )

    def _refuse_noncausal(self, slot: SeedSlot, blueprint: str, blend: str) -> None:
        """On a causal host, refuse a known blueprint or blend that would let a position see later ones."""
        if not self._causal:
            return
        safe, safe_blends = blueprints_for(slot.shape, causal=True), blend_names(causal=True)
        if blueprint not in safe:
            what = f"blueprint '{blueprint}'"
        elif blend in blend_names() and blend not in safe_blends:
            what = f"blend '{blend}'"
        else:
            return
        raise LifecycleError(
            slot.slot_id,
            slot.stage,
            f"germinate {what}",
            f"the host is causal and {what} lets a position see later ones; causal-safe here: blueprints "
            f"{', '.join(safe) or 'none'}, blends {', '.join(safe_blends)}; pass allow_noncausal=True to grow it anyway",
        )

    def advance(self, slot_id: str) -> Edit:
        return self.apply(Edit(Op.ADVANCE, slot_id))

    def fossilize(self, slot_id: str) -> Edit:
        return self.apply(Edit(Op.FOSSILIZE, slot_id))

    def cull(self, slot_id: str) -> Edit:
        return self.apply(Edit(Op.CULL, slot_id))

    def advance_due(self, training_ticks: int) -> list[Edit]:
        """Move on every seed whose stage has run its course, as logged ADVANCE edits:
        GERMINATED -> TRAINING at once, TRAINING -> BLENDING after `training_ticks`.
        A policy then spends its decisions on what only it can decide (where, what, cull,
        fossilize), and several seeds grow at once instead of queueing for one edit a tick."""
        if training_ticks < 1:
            raise ValueError(f"a seed trains for at least 1 tick before it blends, got {training_ticks}")
        due = [
            i
            for i, slot in self.slots.items()
            if slot.stage is S.GERMINATED or (slot.stage is S.TRAINING and slot.ticks_in_stage >= training_ticks)
        ]
        return [self.advance(i) for i in due]

    def step(self, ticks: int = 1) -> None:
        """One tick (or `ticks` at once): blend schedules advance, stage ages grow,
        cooldowns run down."""
        if ticks < 0:
            raise ValueError(f"the plane cannot tick backwards ({ticks} ticks)")
        self.ticks += ticks
        for slot in self.slots.values():
            slot.tick(ticks)

    def guard(self) -> list[str]:
        """Cull every seed whose gradients (or, on a GPU, outputs since the last guard)
        are not finite; call after backward, before the optimizer step. The culled seed's
        gradients are dropped, so the step skips it and the host's own gradients (which
        never flow through the seed) are untouched. One read of the device for all slots."""
        live, health = self.health()
        return self.cull_unhealthy(live, health.tolist() if live else [])

    def health(self) -> tuple[list[SeedSlot], torch.Tensor]:
        """The live seeds and their [output finite, gradients finite] rows, on the device:
        `guard` in two halves, so that several planes can share one read."""
        live = [slot for slot in self.slots.values() if slot.seed is not None and slot.stage is not S.FOSSILIZED]
        device = self._like().device
        if not live:
            return live, torch.ones(0, 2, dtype=torch.bool, device=device)
        # One call per seed checks all its gradients: the check GradScaler runs (it also
        # multiplies them by 1, which changes no bit unless denormals are flushed, not
        # torch's default), where isfinite(g).all() would take five kernels per tensor.
        nonfinite = torch.zeros(len(live), dtype=torch.float32, device=device)  # the dtype the check writes
        one = torch.ones((), dtype=torch.float32, device=device)
        for i, slot in enumerate(live):
            grads = [p.grad for p in slot.seed_parameters() if p.grad is not None]
            if grads:
                torch._amp_foreach_non_finite_check_and_unscale_(grads, nonfinite[i], one)
        outputs_ok = torch.stack([slot.output_finite for slot in live])
        for slot in live:
            slot.output_finite.fill_(True)  # the next verdict starts afresh
        return live, torch.stack([outputs_ok, nonfinite == 0], dim=1)

    def cull_unhealthy(self, live: list[SeedSlot], health: list[list[bool]]) -> list[str]:
        culled = []
        for slot, (output_ok, grads_ok) in zip(live, health):
            if output_ok and grads_ok:
                continue
            for p in slot.seed_parameters():
                p.grad = None
            slot.cull_nonfinite(f"non-finite seed {'output' if not output_ok else 'gradient'}")
            culled.append(slot.slot_id)
        return culled

    # ---- optimizers -------------------------------------------------------------------
    def seed_parameters(self, slot_id: str) -> list[nn.Parameter]:
        """The trainable parameters of the seed (and its blend gate) in this slot."""
        return self.slot(slot_id).seed_parameters()

    def attach_optimizer(self, optimizer: torch.optim.Optimizer, **group_options) -> None:
        """Keep `optimizer` in step with the seeds: each germinated seed joins it as a new
        parameter group (with `group_options`, e.g. lr), and leaves it when culled."""
        self._optimizers.append((weakref.ref(optimizer), group_options))
        for slot in self.slots.values():
            if slot.seed is not None:
                self._attach(slot)

    def _attach(self, slot: SeedSlot) -> None:
        params = slot.seed_parameters()
        for ref, options in self._optimizers:
            opt = ref()
            if opt is None or not params:
                continue
            known = {id(p) for g in opt.param_groups for p in g["params"]}
            fresh = [p for p in params if id(p) not in known]
            if fresh:
                opt.add_param_group({"params": fresh, "esper_slot": slot.slot_id, **options})

    def _detach(self, slot: SeedSlot) -> None:
        params = {id(p) for p in slot.seed_parameters()}
        for ref, _ in self._optimizers:
            opt = ref()
            if opt is None:
                continue
            for group in list(opt.param_groups):
                if group.get("esper_slot") == slot.slot_id:
                    for p in group["params"]:
                        opt.state.pop(p, None)
                    # By identity: list.remove compares groups with ==, which compares their tensors.
                    opt.param_groups[:] = [g for g in opt.param_groups if g is not group]
            for group in opt.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in params]

    def __getstate__(self):
        # A copy of the model is not trained by the original's optimizers.
        state = self.__dict__.copy()
        state["_optimizers"] = []
        return state

    def _like(self) -> torch.Tensor:
        """A tensor whose device and dtype new seeds should take (the host's first parameter)."""
        ref = self.graph_host.parameter_like() if self.graph_host is not None else None
        return ref if ref is not None else torch.empty(0)

    @contextmanager
    def ablate(self, *slot_ids: str):
        """Inside the block the named slots (all, if none named) pass the host activation
        through untouched, as if alpha were 0: the counterfactual for a seed's contribution."""
        slots = [self.slot(i) for i in slot_ids] if slot_ids else list(self.slots.values())
        for slot in slots:
            slot.ablated = True
        try:
            yield
        finally:
            for slot in slots:
                slot.ablated = False

    # ---- hook routing (eager hosts) ------------------------------------------------------
    @contextmanager
    def routing(self):
        """Slots hooked onto an eager host act only inside the instrumented model's call,
        so the original host object keeps computing exactly what it did."""
        self._routing += 1
        try:
            yield
        finally:
            self._routing -= 1

    @property
    def is_routing(self) -> bool:
        return self._routing > 0

    # ---- reading -------------------------------------------------------------------------
    def telemetry(self) -> list[dict]:
        return [slot.telemetry().to_dict() for slot in self.slots.values()]

    def extra_repr(self) -> str:
        return f"slots={len(self._ids)}, step={self.ticks}, causal={self._causal}"
