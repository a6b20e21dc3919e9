"""Does growth help a transformer? TinyGPT on text: the host alone against heuristic growth, paired by seed.

    python tools/evidence_text.py            # torch's Tensor docstrings as characters, 5 seeds (2 CPU cores: ~25 min)
    python tools/evidence_text.py --smoke    # a few hundred characters, 2 seeds, seconds (tested)

The protocol, in order (each run is appended to WORK/runs.jsonl as it finishes, so an
interrupted benchmark picks up where it stopped):

  1. headroom   on seed 0, the host alone and static bigger models: one causal-safe
                blueprint fossilized in every slot before the first step. The heuristic
                prefers the blueprint of the static model with the lowest validation
                loss among those within the reward's parameter budget.
  2. arms       host, heuristic and the best static model on every evaluation seed.

Every arm of one seed starts from the same host initialisation and batch order. Choices
read validation numbers only; the test block is read once per run, at its end. Writes
OUT/evidence-text.json and the "TinyGPT on text" section at the end of OUT/evidence.md
(tools/evidence.py keeps that section when it rewrites the rest).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evidence_doc import TEXT_SECTION, paired, std  # noqa: E402
from tiny_gpt import TinyGPT  # noqa: E402

from esper.data.splits import load_data  # noqa: E402
from esper.leyline import Vocabulary  # noqa: E402
from esper.runs.grow_run import write_grow_run  # noqa: E402
from esper.runs.metrics import clean, read_jsonl  # noqa: E402
from esper.simic.env import EnvConfig, GrowthEnv  # noqa: E402
from esper.simic.rewards import RewardConfig  # noqa: E402
from esper.simic.vectorized import decide_with, grow_once  # noqa: E402
from esper.tamiyo import HeuristicConfig, build_policy, mean_or_nan  # noqa: E402

# The docstrings of torch.Tensor's methods (143 kB of English, code and reStructuredText):
# fixed for a given torch version, and big enough that TinyGPT does not just memorise it.
TEXT = Path(torch.__file__).parent / "_tensor_docs.py"
BLUEPRINTS = ["causal_attention", "lora", "mlp", "norm"]  # every causal-safe blueprint of a sequence slot
BLENDS = ["linear", "sigmoid"]
HOST_ALONE = build_policy("wait", Vocabulary(BLUEPRINTS, BLENDS, 1))  # never grows: its vocabulary is not used
LN2 = math.log(2)


@dataclass
class Regime:
    """What every arm trains in."""

    context: int
    val_fraction: float  # validation and test each take this share of the text
    seeds: int
    dim: int
    depth: int
    env: EnvConfig
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(param_budget=1.0))


FULL = Regime(64, 0.1, 5, 64, 4, EnvConfig(epochs=2, decisions_per_epoch=6, batch_size=32, blend_steps=2, eval_batch_size=256))
SMOKE = Regime(16, 0.2, 2, 16, 2, EnvConfig(epochs=1, decisions_per_epoch=2, batch_size=16, blend_steps=1, eval_batch_size=64))


class TextBenchmark:
    def __init__(self, regime: Regime, text: Path, work: Path):
        self.regime, self.text, self.work = regime, text, work
        self.data = load_data(f"text:{text}", context=regime.context, val_fraction=regime.val_fraction, seed=0)
        r = regime
        self.host = TinyGPT(vocab=self.data.num_classes, dim=r.dim, depth=r.depth, heads=4, context=r.context)
        work.mkdir(parents=True, exist_ok=True)
        self.log_path = work / "runs.jsonl"
        self.runs = {(x["arm"], x["seed"]): x for x in read_jsonl(self.log_path)} if self.log_path.exists() else {}

    def run(self, arm: str, seed: int, policy, fossils: dict[str, str] | None = None) -> dict:
        """One episode of `arm` on `seed` (skipped when the log already has it)."""
        if (arm, seed) in self.runs:
            return self.runs[(arm, seed)]
        env_cfg = dataclasses.replace(self.regime.env, fossils=fossils or {})
        env = GrowthEnv(lambda: copy.deepcopy(self.host), self.data, env_cfg, self.regime.reward, blueprints=BLUEPRINTS, blends=BLENDS)
        s = grow_once(env, seed, decide_with(policy), self.data.test)
        write_grow_run(self.work / "runs" / f"{arm.replace(':', '-')}-{seed}", summary=s, edits=env.plane.edits, report=False)
        record = {
            "arm": arm,
            "seed": seed,
            "test_bits": s["test_loss"] / LN2,
            "test_acc": s["test_acc"],
            "val_bits": s["val_loss"] / LN2,
            "val_acc": s["val_acc"],
            "params_added": s["params"] - s["host_params"],
            "host_params": s["host_params"],
            "seconds": s["wall_seconds"],
            "fossils": s["fossil_blueprints"],
            "edits": [e.to_dict() for e in env.plane.edits],
        }
        self.runs[(arm, seed)] = record
        with open(self.log_path, "a") as f:
            f.write(json.dumps(clean(record)) + "\n")
        print(
            f"  {arm:>22} seed {seed}: test {record['test_bits']:.4f} bits/char, acc {s['test_acc']:.4f}, "
            f"+{record['params_added']:,} params, fossils {record['fossils'] or '-'} ({record['seconds']:.0f}s)",
            flush=True,
        )
        return record

    def slots(self) -> list[str]:
        env = GrowthEnv(lambda: copy.deepcopy(self.host), self.data, self.regime.env)
        env.reset(0)
        return list(env.plane.slots)

    def protocol(self) -> dict:
        start = time.perf_counter()
        slots = self.slots()
        self.run("host", 0, HOST_ALONE)
        for bp in BLUEPRINTS:
            self.run(f"static:{bp}", 0, HOST_ALONE, {s: bp for s in slots})
        budget = self.regime.reward.param_budget * self.runs[("host", 0)]["host_params"]
        fits = [bp for bp in BLUEPRINTS if self.runs[(f"static:{bp}", 0)]["params_added"] <= budget] or BLUEPRINTS
        preferred = min(fits, key=lambda bp: self.runs[(f"static:{bp}", 0)]["val_bits"])
        best = min(BLUEPRINTS, key=lambda bp: self.runs[(f"static:{bp}", 0)]["val_bits"])
        print(f"  the heuristic prefers {preferred}; static = {best}@all (best validation loss)", flush=True)
        # The CNN benchmark's settings (tools/evidence.py): a seed may grow in every slot,
        # deepest first, and only a clearly harmful one is culled.
        heuristic = HeuristicConfig(
            blueprint_preference=[preferred] + [b for b in BLUEPRINTS if b != preferred], max_active=4, tolerance=0.1, decline=0.1
        )
        policy = build_policy("heuristic", Vocabulary(BLUEPRINTS, BLENDS, self.regime.env.blend_steps), heuristic=heuristic)
        for seed in range(self.regime.seeds):
            self.run("host", seed, HOST_ALONE)
            self.run("heuristic", seed, policy)
            self.run("static", seed, HOST_ALONE, {s: best for s in slots})
        return {"preferred": preferred, "static": f"{best}@all", "seconds": time.perf_counter() - start}


def summarize(runs: dict, seeds: int) -> dict:
    """Per arm: mean ± std of test bits per character and accuracy, and the paired
    differences against the host alone on the same seed."""
    arms = {}
    for arm in ("host", "heuristic", "static"):
        rows = [runs[(arm, s)] for s in range(seeds) if (arm, s) in runs]
        host = [runs[("host", s)] for s in range(seeds) if (arm, s) in runs]
        arms[arm] = {
            "seeds": len(rows),
            "test_bits": [r["test_bits"] for r in rows],
            "test_acc": [r["test_acc"] for r in rows],
            "params_added": [r["params_added"] for r in rows],
            "seconds": [r["seconds"] for r in rows],
            "fossils": [r["fossils"] for r in rows],
            "bits_vs_host": paired([r["test_bits"] - h["test_bits"] for r, h in zip(rows, host)]) if arm != "host" else None,
            "acc_vs_host": paired([r["test_acc"] - h["test_acc"] for r, h in zip(rows, host)]) if arm != "host" else None,
        }
    return arms


def section(bench: TextBenchmark, outcome: dict, arms: dict, command: str) -> str:
    r, d = bench.regime, bench.data
    host_params = bench.runs[("host", 0)]["host_params"]
    digest = hashlib.sha256(bench.text.read_bytes()).hexdigest()[:12]
    lines = [
        TEXT_SECTION,
        "",
        "## TinyGPT on text",
        "",
        f"Produced by `OMP_NUM_THREADS=1 {command} --threads 1`: {len(bench.runs)} runs, "
        f"{sum(x['seconds'] for x in bench.runs.values()) / 60:.0f} minutes of one process on this project's 2-core "
        f"machine (runs already in its log are not repeated); numbers in `evidence-text.json`. "
        f"TinyGPT (dim {r.dim}, {r.depth} blocks, {host_params:,} parameters) "
        f"learns the characters of `{bench.text.name}` ({bench.text.stat().st_size:,} bytes, sha256 {digest}..., "
        f"{d.num_classes} distinct characters; torch {torch.__version__}): "
        f"{len(d.train):,} training windows of {r.context} characters (starting every {r.context // 8}), "
        f"{len(d.val):,} validation and {len(d.test):,} test windows from contiguous blocks of the text "
        f"({r.val_fraction:.0%} each, at its end); {r.env.epochs} epochs, {r.env.decisions_per_epoch} decisions per "
        f"epoch, AdamW lr {r.env.lr} with cosine decay, batch {r.env.batch_size}; the reward pays next-token validation "
        f"accuracy and grants growth up to {r.reward.param_budget:.0%} of the host free. Seeds 0..{r.seeds - 1}, each arm "
        "from the same initialisation and batch order. The heuristic prefers "
        f"`{outcome['preferred']}` (the static model with the lowest validation loss within that budget, seed 0); "
        f"`static` is `{outcome['static']}`, fossilized in every slot from the first step.",
        "",
        "| arm | test bits per character (mean ± std) | vs host alone [95% CI] | next-token test accuracy | "
        "vs host alone [95% CI] | parameters added (mean) | seconds (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, a in arms.items():
        if not a["seeds"]:
            continue
        bits, acc = a["bits_vs_host"], a["acc_vs_host"]
        lines.append(
            f"| {arm} | {mean_or_nan(a['test_bits']):.4f} ± {std(a['test_bits']):.4f} | "
            + (f"{bits['mean_diff']:+.4f} [{bits['ci95'][0]:+.4f}, {bits['ci95'][1]:+.4f}]" if bits else "")
            + f" | {mean_or_nan(a['test_acc']):.4f} ± {std(a['test_acc']):.4f} | "
            + (f"{acc['mean_diff'] * 100:+.2f} pts [{acc['ci95'][0] * 100:+.2f}, {acc['ci95'][1] * 100:+.2f}]" if acc else "")
            + f" | {mean_or_nan(a['params_added']):,.0f} | {mean_or_nan(a['seconds']):.0f} |"
        )
    grown = [f for fossils in arms["heuristic"]["fossils"] for f in fossils]
    lines += [
        "",
        "Headroom on seed 0 (validation bits per character): "
        + ", ".join(
            f"{k[0].split(':')[1]} {v['val_bits']:.4f} (+{v['params_added']:,})"
            for k, v in bench.runs.items()
            if k[0].startswith("static:")
        )
        + f"; host {bench.runs[('host', 0)]['val_bits']:.4f}. "
        f"The heuristic fossilized {len(grown)} seeds over {arms['heuristic']['seeds']} runs"
        + (f" ({', '.join(sorted(set(grown)))})." if grown else "."),
        "",
    ]
    lines += [f"- **{arm}**: {verdict(arms[arm]['bits_vs_host'])}" for arm in ("heuristic", "static") if arms[arm]["seeds"] > 1]
    gain, added = arms["static"]["bits_vs_host"]["mean_diff"], mean_or_nan(arms["static"]["params_added"])
    if gain < 0 and added > 0:
        share = arms["heuristic"]["bits_vs_host"]["mean_diff"] / gain + 0.0  # + 0.0: no "-0%"
        lines.append(
            f"- **heuristic against static**: {share:.0%} of the static model's gain in bits per character, "
            f"with {mean_or_nan(arms['heuristic']['params_added']) / added:.0%} of its added parameters."
        )
    return "\n".join(lines) + "\n"


def verdict(bits: dict) -> str:
    """What a paired interval of test bits per character (arm minus host) says."""
    low, high = bits["ci95"]
    if high < 0:
        return f"fewer bits per character than the host alone: the 95% interval [{low:+.4f}, {high:+.4f}] lies below zero."
    if low > 0:
        return f"more bits per character than the host alone: the 95% interval [{low:+.4f}, {high:+.4f}] lies above zero."
    return f"no difference from the host alone that these seeds can resolve: the 95% interval [{low:+.4f}, {high:+.4f}] spans zero."


def write(bench: TextBenchmark, outcome: dict, out: Path, command: str, prefix: str) -> tuple[Path, Path]:
    arms = summarize(bench.runs, bench.regime.seeds)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{prefix}.json"
    json_path.write_text(
        json.dumps(
            clean(
                {
                    "command": command,
                    "outcome": outcome,
                    "arms": arms,
                    "headroom": {
                        arm: r for (arm, seed), r in bench.runs.items() if seed == 0 and (arm == "host" or arm.startswith("static:"))
                    },
                }
            ),
            indent=2,
        )
    )
    md_path = out / "evidence.md"
    kept = md_path.read_text().split(TEXT_SECTION)[0].rstrip("\n") + "\n\n" if md_path.exists() else ""
    md_path.write_text(kept + section(bench, outcome, arms, command))
    return json_path, md_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="the tiny regime the tests run")
    p.add_argument("--text", default=str(TEXT), help="the text file (default: torch's _tensor_docs.py)")
    p.add_argument("--out", default=str(ROOT / "docs"), help="where evidence.md and evidence-text.json go")
    p.add_argument("--work", help="run directory for the log (default runs/evidence-text)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    text = Path(args.text)
    if not text.is_file():
        print(f"evidence_text: no text file at {text}; pass --text PATH", file=sys.stderr)
        return 2
    regime = SMOKE if args.smoke else FULL
    bench = TextBenchmark(regime, text, Path(args.work or ROOT / "runs" / ("evidence-text-smoke" if args.smoke else "evidence-text")))
    outcome = bench.protocol()
    command = "python tools/evidence_text.py" + (" --smoke" if args.smoke else "")
    json_path, md_path = write(bench, outcome, Path(args.out), command, "evidence-text-smoke" if args.smoke else "evidence-text")
    print(f"evidence_text: wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
