"""Shape-aware blueprints: a blueprint that cannot act at a slot's shape is masked for every
policy and refused by the plane, with the reason and the blueprints that do fit."""

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import esper
from esper.kasmina.blueprints import blueprints_for, why_unfit
from esper.leyline import Edit, EditError, LifecycleError, Op, SeedStage, Vocabulary
from esper.simic.episode import Numbers
from esper.simic.loop import GrowthLoop
from esper.tamiyo import HeuristicConfig, HeuristicPolicy

BUILTINS = ["attention", "causal_attention", "conv_enhance", "depthwise", "lora", "mlp", "norm"]
VOCAB = Vocabulary(BUILTINS, ["linear"], 1)
UNMEASURED = Numbers(math.nan, math.nan, math.nan, math.nan)
CENTRE_TAP = "a 3x3 kernel sees a 1x1 map through its centre tap only"


class PooledCNN(nn.Module):
    """Two 3x3 blocks, then global pooling before a last 1x1 block: its slot sees 1x1 maps."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.block1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.block3 = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU())
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.head(self.block3(F.adaptive_avg_pool2d(x, 1)).flatten(1))


class StackCNN(nn.Module):
    """3x3 blocks with optional pooling after each (ceil mode, so maps shrink to 1, never 0)."""

    def __init__(self, c: int, pools: list[bool]):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in pools)
        self.pools = pools
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        x = self.stem(x)
        for block, pool in zip(self.blocks, self.pools):
            x = torch.relu(block(x))
            if pool:
                x = F.max_pool2d(x, 2, ceil_mode=True)
        return self.head(x.mean((2, 3)))


def offered(obs, n: int) -> list[str]:
    if not obs.op_mask[n, Op.GERMINATE]:
        return []
    return [name for j, name in enumerate(VOCAB.blueprints) if obs.blueprint_mask[n, j]]


def observe(mm):
    loop = GrowthLoop(mm, VOCAB, decisions=4)
    loop.start(UNMEASURED)
    return loop, loop.observe()


@pytest.fixture
def pooled():
    torch.manual_seed(0)
    return esper.instrument(PooledCNN(), (torch.randn(2, 3, 8, 8),))


def test_the_heuristic_is_not_offered_a_3x3_kernel_on_a_1x1_map(pooled):
    assert pooled.plane.slot("block3").shape == (2, 16, 1, 1)
    loop, obs = observe(pooled)
    assert offered(obs, obs.slot_ids.index("block1")) == ["attention", "conv_enhance", "depthwise", "norm"]
    assert offered(obs, obs.slot_ids.index("block3")) == ["attention", "norm"]
    heuristic = HeuristicPolicy(VOCAB, HeuristicConfig(blueprint_preference=["depthwise", "conv_enhance", "attention"]))
    edit = loop.apply(heuristic.decide([obs])[0])
    assert (edit.op, edit.slot, edit.blueprint) == (Op.GERMINATE, "block3", "attention")


def test_germinate_refuses_a_blueprint_that_cannot_act_and_names_the_ones_that_can(pooled):
    plane = pooled.plane
    why = f"blueprint 'depthwise': its activations are 16x1x1 per sample, and {CENTRE_TAP}.*fit here: attention, norm"
    with pytest.raises(LifecycleError, match=f"slot 'block3' in stage DORMANT cannot germinate {why}"):
        plane.germinate("block3", "depthwise")
    with pytest.raises(LifecycleError, match="'conv_enhance'.*centre tap"):
        plane.apply(Edit(Op.GERMINATE, "block3", "conv_enhance"))
    assert plane.slot("block3").stage is SeedStage.DORMANT and plane.edits == []
    plane.germinate("block2", "depthwise")  # an 8x8 map: every tap sees it


def test_a_logged_edit_that_grew_an_unfit_seed_does_not_replay():
    log = [Edit(Op.GERMINATE, "block3", "depthwise", "linear", 5, tick=0)]
    with pytest.raises(EditError, match=f"edit 0 .* does not replay: .*{CENTRE_TAP}"):
        esper.replay(PooledCNN(), (torch.randn(2, 3, 8, 8),), log)


def test_resnet18_on_cifar_sized_images_grows_no_3x3_kernel_at_layer4():
    torchvision = pytest.importorskip("torchvision")
    mm = esper.instrument(torchvision.models.resnet18(weights=None, num_classes=10), (torch.randn(2, 3, 32, 32),))
    shapes = {slot_id: slot.shape[2:] for slot_id, slot in mm.plane.slots.items()}
    assert shapes["layer3"] == (2, 2) and shapes["layer4"] == (1, 1)
    assert "depthwise" in blueprints_for(mm.plane.slot("layer3").shape)  # a 3x3 on 2x2 still mixes neighbours
    _, obs = observe(mm)
    assert offered(obs, obs.slot_ids.index("layer4")) == ["attention", "norm"]
    with pytest.raises(LifecycleError, match=f"'depthwise': its activations are 512x1x1 per sample, and {CENTRE_TAP}"):
        mm.plane.germinate("layer4", "depthwise")


@pytest.mark.parametrize(
    "name, shape, reason",
    [
        ("depthwise", (2, 8, 1, 1), CENTRE_TAP),
        ("conv_enhance", (2, 8, 1, 1), CENTRE_TAP),
        ("depthwise", (2, 8, 1, 5), None),  # a row: the kernel still mixes along it
        ("conv_enhance", (2, 8, 2, 2), None),
        ("attention", (2, 8, 1, 1), None),  # squeeze-excite gates channels, not positions
        ("norm", (2, 8, 1, 1), "GroupNorm normalises one value at a time"),
        ("norm", (2, 16, 1, 1), None),  # two channels per group
        ("attention", (2, 1, 16), "self-attention over a single position"),
        ("causal_attention", (2, 1, 16), "self-attention over a single position"),
        ("mlp", (2, 5, 1), "LayerNorm normalises one value at a time"),
        ("norm", (2, 5, 1), "LayerNorm normalises one value at a time"),
        ("lora", (2, 1, 1), None),
        ("lora", (2, 8, 4, 4), r"applies to rank \[3\] activations, not rank 4"),
    ],
)
def test_why_a_blueprint_cannot_act(name, shape, reason):
    found = why_unfit(name, shape)
    assert found is None if reason is None else re.search(reason, found), found


def acts(slot, shape) -> bool:
    """Whether the fully blended seed's change to its input depends on the input: a seed that
    can add only a constant (or nothing) cannot act."""
    for name, p in slot.named_parameters():
        # Zero biases, or a negative one could hold every ReLU shut on a small map; weights
        # well away from zero, or a product of small ones could hide under rounding.
        nn.init.zeros_(p) if name.endswith("bias") else nn.init.uniform_(p, 0.5, 1.0)
    slot.eval()
    h = torch.randn(32, *shape[1:])
    with torch.no_grad():
        change = slot(h) - h
    return bool((change - change[:1]).abs().max() > 1e-4)


def grow_or_refuse(plane, slot_id: str, name: str, offered_here: bool) -> None:
    slot = plane.slot(slot_id)
    if not offered_here:
        with pytest.raises(LifecycleError, match=f"cannot germinate blueprint '{name}'"):
            plane.germinate(slot_id, name, steps=1)
        assert slot.stage is SeedStage.DORMANT
        return
    plane.germinate(slot_id, name, steps=1)
    plane.advance(slot_id), plane.advance(slot_id)
    plane.step()  # alpha is now 1
    assert acts(slot, slot.shape), f"{name} at {slot.shape}"
    plane.cull(slot_id)
    plane.step()


@settings(max_examples=12, deadline=None)
@given(
    st.sampled_from([1, 2, 3, 4, 8]),
    st.integers(1, 6),
    st.integers(1, 6),
    st.lists(st.booleans(), min_size=2, max_size=4),
    st.integers(0, 2**16),
)
def test_on_a_cnn_of_any_shape_what_the_masks_offer_acts_and_what_they_mask_is_refused(c, h, w, pools, seed):
    torch.manual_seed(seed)
    mm = esper.instrument(StackCNN(c, pools), (torch.randn(2, 3, h, w),))
    _, obs = observe(mm)
    for n, slot_id in enumerate(obs.slot_ids):
        here = offered(obs, n)
        assert here == [b for b in blueprints_for(mm.plane.slot(slot_id).shape) if b in VOCAB.blueprints]
        for name in VOCAB.blueprints:
            grow_or_refuse(mm.plane, slot_id, name, name in here)


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just(2), st.integers(1, 9), st.integers(1, 3), st.integers(1, 3)),  # (B, C, H, W)
        st.tuples(st.just(2), st.integers(1, 4), st.integers(1, 9)),  # (B, T, D)
    ),
    st.integers(0, 2**16),
)
def test_for_any_activation_shape_a_fitting_blueprint_acts_and_an_unfit_one_is_refused(shape, seed):
    torch.manual_seed(seed)
    plane = esper.KasminaPlane([("s", shape)])
    fits = blueprints_for(shape)
    for name in BUILTINS:
        assert (name in fits) == (why_unfit(name, shape) is None)
        grow_or_refuse(plane, "s", name, name in fits)
