"""Metrics files: JSON-safe records, torn lines after a kill, TensorBoard scalars."""

from __future__ import annotations

import json
import math

from esper.runs.metrics import MetricsWriter, clean, flatten, read_jsonl, truncate_jsonl


def test_records_are_json_safe():
    record = clean({"a": math.nan, "b": [1.0, math.inf], "c": (1, 2), "d": {"e": -math.inf}})
    assert record == {"a": None, "b": [1.0, None], "c": [1, 2], "d": {"e": None}}
    json.dumps(record, allow_nan=False)


def test_flatten_keeps_numbers_only():
    flat = flatten({"a": 1, "b": {"c": 2.5, "d": "text", "e": math.nan}, "f": True, "g": [1, 2]})
    assert flat == {"a": 1.0, "b/c": 2.5, "f": 1.0}


def test_writer_appends_and_a_torn_line_is_skipped(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=True) as w:
        w.write("episode", {"episode": 0, "return": 1.5, "reward": {"task": 0.5}}, step=0)
        w.write("update", {"update": 0, "entropy_norm/op": math.nan, "warnings": ["x"]}, step=0)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "episode", "epis')
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["kind"] for r in records] == ["episode", "update"]
    assert records[1]["entropy_norm/op"] is None and records[1]["warnings"] == ["x"]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    dropped = truncate_jsonl(tmp_path / "metrics.jsonl", lambda r: r["kind"] == "episode")
    assert dropped == 1 and [r["kind"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == ["episode"]
