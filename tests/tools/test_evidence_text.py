"""The TinyGPT text evidence keeps working: its smoke regime runs whole and shares evidence.md with the CNN benchmark."""

from __future__ import annotations

import json

from tests.helpers import ROOT
from tests.tools.test_evidence import _load

text = _load("evidence_text")
doc = _load("evidence_doc")


def test_smoke_regime_runs_pairs_by_seed_and_keeps_the_rest_of_evidence_md(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((ROOT / "README.md").read_text()[:3000])
    out = tmp_path / "docs"
    out.mkdir()
    (out / "evidence.md").write_text("# The CNN benchmark\n\nits table\n")
    args = ["--smoke", "--text", str(corpus), "--out", str(out), "--work", str(tmp_path / "work"), "--threads", "1"]
    assert text.main(args) == 0
    result = json.loads((out / "evidence-text-smoke.json").read_text())
    arms = result["arms"]
    assert set(arms) == {"host", "heuristic", "static"} and all(a["seeds"] == 2 for a in arms.values())
    host = arms["host"]["test_bits"]
    assert arms["heuristic"]["bits_vs_host"] == doc.paired([h - b for h, b in zip(arms["heuristic"]["test_bits"], host)])
    assert set(result["headroom"]) == {"host"} | {f"static:{b}" for b in text.BLUEPRINTS}
    md = (out / "evidence.md").read_text()
    assert md.startswith("# The CNN benchmark\n\nits table\n") and md.count("## TinyGPT on text") == 1
    assert "`OMP_NUM_THREADS=1 python tools/evidence_text.py --smoke --threads 1`" in md and "| heuristic |" in md

    assert text.main(args) == 0  # again: every run comes from the log, and the section is replaced, not repeated
    assert (out / "evidence.md").read_text().count("## TinyGPT on text") == 1
