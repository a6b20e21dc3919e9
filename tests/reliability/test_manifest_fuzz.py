"""A manifest changed at random loads to the very same outputs or raises CheckpointError:
never another exception, and never does it run code (the factory's marker stays absent)."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import esper
from esper.leyline import CheckpointError
from tests.helpers import HostCNN
from tests.reliability.checkpoints import grown


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    mm, x = grown(folder)
    ck = folder / "ck"
    return ck, yaml.safe_load((ck / "manifest.yaml").read_text()), x, mm(x).detach()


class Tagged:
    """A value written with an explicit YAML tag."""

    def __init__(self, tag: str, value):
        self.tag, self.value = tag, value


def _represent(dumper, t: Tagged):
    if isinstance(t.value, dict):
        return dumper.represent_mapping(t.tag, t.value)
    if isinstance(t.value, list):
        return dumper.represent_sequence(t.tag, t.value)
    return dumper.represent_scalar(t.tag, str(t.value))


class Dumper(yaml.SafeDumper):
    pass


Dumper.add_representer(Tagged, _represent)

TAGS = [
    "tag:yaml.org,2002:python/object/apply:os.system",
    "tag:yaml.org,2002:python/name:builtins.exec",
    "tag:yaml.org,2002:python/object:builtins.object",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:binary",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:set",
    "!custom",
]
WORDS = [
    "float64",
    "int64",
    "bool",
    "qint8",
    "load",
    "block1",
    "block2",
    "block2+1",
    "block3",
    "nowhere",
    "norm",
    "attention",
    "conv_enhance",
    "linear",
    "sigmoid",
    "gated",
    "DORMANT",
    "TRAINING",
    "BLENDING",
    "FOSSILIZED",
    "CULLED",
    "GERMINATE",
    "ADVANCE",
    "CULL",
    "FOSSILIZE",
    "WAIT",
    "fx",
    "export",
    "this:s",
    "os:system",
    "../ck/tensors.safetensors",
    "manifest.yaml",
    "esper-checkpoint/1",
    "",
]
INTS = st.integers(-3, 70) | st.just(2**40)  # a huge size must fail fast, not allocate
STRINGS = st.sampled_from(WORDS) | st.text(max_size=6)
KINDS = {
    type(None): st.none(),
    bool: st.booleans(),
    int: INTS,
    float: st.floats(allow_nan=False, width=32),
    str: STRINGS,
    list: st.lists(st.integers(0, 9), max_size=3),
    dict: st.dictionaries(st.sampled_from(WORDS), st.integers(0, 9), max_size=2),
}
ANY = st.one_of(*KINDS.values())


def _paths(node, at=()):
    """Where every value of a manifest lives: key and index paths below the root."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield (*at, key)
        yield from _paths(child, (*at, key))


def _same_kind(draw, value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return draw(INTS)
    if isinstance(value, str):
        return draw(STRINGS)
    if isinstance(value, list) and value:
        return draw(st.sampled_from([value[::-1], value + value[:1], value[1:]]))
    if isinstance(value, dict):
        return {**value, draw(st.sampled_from(WORDS)): draw(ANY)}
    return draw(ANY)


@st.composite
def mutated(draw, manifest: dict, marker):
    m = copy.deepcopy(manifest)
    for _ in range(draw(st.integers(1, 2))):
        paths = list(_paths(m))
        *parents, last = draw(st.sampled_from(paths))
        node = m
        for key in parents:
            node = node[key]
        how = draw(st.sampled_from(["delete", "retype", "change", "change", "tag"]))
        if how == "delete":
            del node[last]
        elif how == "retype":
            other = draw(st.sampled_from([kind for kind in KINDS if kind is not type(node[last])]))
            node[last] = draw(KINDS[other])
        elif how == "change":
            node[last] = _same_kind(draw, node[last])
        else:
            tag = draw(st.sampled_from(TAGS))
            node[last] = Tagged(tag, [f"touch {marker}"] if "apply" in tag else node[last])
    return m


@settings(max_examples=60)
@given(data=st.data())
def test_a_mutated_manifest_loads_identically_or_is_refused(base, data):
    ck, manifest, x, expected = base
    marker = ck.parent / "MARKER"
    changed = data.draw(mutated(manifest, marker))
    (ck / "manifest.yaml").write_text(yaml.dump(changed, Dumper=Dumper, sort_keys=False))
    with pytest.raises(CheckpointError):
        esper.load(ck)  # no host given and not trusted: refused whatever the manifest says
    try:
        loaded = esper.load(ck, host=HostCNN())
    except CheckpointError:
        pass
    else:
        assert torch.equal(loaded.eval()(x), expected)
    assert not marker.exists(), "the manifest made esper run code"
