"""Search the heuristic's settings with the cross-entropy method, on pretraining proxy episodes.

    python tools/search_teacher.py                       # about 40 minutes on one core
    python tools/search_teacher.py --iterations 1 --population 4 --hosts plain-w8-b4   # a quick look

Each setting below has a categorical distribution, uniform at first. A candidate is one
draw of every setting on top of the evidence benchmark's rule
(`HeuristicConfig.every_slot`); it plays one proxy episode (tools/pretrain_tamiyo.py's
data, esper.simic.pretrain.proxy_env) on every training host under a fixed seed, and its
score is its mean validation-accuracy gain over the host alone on the same host and seed
(paired, so every candidate meets the same initialisations and batch orders). The
benchmark's rule itself is a candidate of the first iteration. The `--elite` best refit
each distribution (smoothed, so no choice dies out on one noisy iteration). At the end the
best candidate seen and the benchmark's rule play fresh seeds, and the gains on those are
what the search claims. Every episode is appended to WORK/search.jsonl as it ends.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evidence_regime import BLENDS, BLUEPRINTS, CIFAR_ARCHIVE  # noqa: E402
from pretrain_tamiyo import proxy_data, proxy_episode  # noqa: E402

from esper.leyline import Vocabulary  # noqa: E402
from esper.simic.host_zoo import TRAINING_HOSTS  # noqa: E402
from esper.simic.pretrain import proxy_env  # noqa: E402
from esper.tamiyo import HeuristicConfig, build_policy  # noqa: E402

# What the search may change; "preferred" is the blueprint tried first.
SPACE: dict[str, list] = {
    "preferred": ["depthwise", "conv_enhance", "attention", "norm"],
    "blueprint_by": ["preference", "budget"],
    "germinate_at": ["last", "first"],
    "max_active": [1, 2, 4],
    "latest_germination": [0.0, 0.1, 0.25, 0.5],
    "tolerance": [0.02, 0.05, 0.1, 0.2],
    "decline": [0.05, 0.1, 0.2],
    "loss_rise": [0.02, 0.05, 1.0],  # 1.0: the loss-rise cull is off
}
BENCHMARK = {"preferred": "depthwise", "blueprint_by": "preference", "germinate_at": "last", "max_active": 4}
BENCHMARK |= {"latest_germination": 0.25, "tolerance": 0.1, "decline": 0.1, "loss_rise": 0.02}


def rule(choice: dict) -> HeuristicConfig:
    settings = dict(choice)
    return HeuristicConfig.every_slot(settings.pop("preferred"), **settings)


def refit(probs: dict[str, list[float]], elite: list[dict], smoothing: float) -> dict[str, list[float]]:
    """Each setting's new distribution: the elite's frequencies, mixed with the old by `smoothing`."""
    out = {}
    for name, values in SPACE.items():
        freq = [sum(c[name] == v for c in elite) / len(elite) for v in values]
        out[name] = [smoothing * f + (1 - smoothing) * p for f, p in zip(freq, probs[name])]
    return out


class Proxy:
    """Proxy episodes on the training hosts, each appended to `log` and never played twice."""

    def __init__(self, data, log: Path):
        self.data, self.log = data, log
        self.vocab = Vocabulary(BLUEPRINTS, BLENDS, proxy_env().blend_steps)
        self.done = {}
        if log.exists():
            for line in log.read_text().splitlines():
                r = json.loads(line)
                self.done[(r["rule"], r["host"], r["seed"])] = r["val_acc"]

    def val_acc(self, choice: dict | None, host: str, seed: int) -> float:
        """None: the host alone."""
        key = (json.dumps(choice, sort_keys=True), host, seed)
        if key not in self.done:
            policy = build_policy("wait", self.vocab) if choice is None else build_policy("heuristic", self.vocab, heuristic=rule(choice))
            self.done[key] = proxy_episode(self.data, host, policy, self.vocab, seed)["val_acc"]
            with open(self.log, "a") as f:
                f.write(json.dumps({"rule": key[0], "host": host, "seed": seed, "val_acc": self.done[key]}) + "\n")
        return self.done[key]

    def gain(self, choice: dict, pairs: list[tuple[str, int]]) -> float:
        """Mean paired gain in validation accuracy over the host alone, in points."""
        return 100 * statistics.fmean(self.val_acc(choice, h, s) - self.val_acc(None, h, s) for h, s in pairs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--elite", type=int, default=3)
    p.add_argument("--smoothing", type=float, default=0.7)
    p.add_argument("--hosts", nargs="+", default=list(TRAINING_HOSTS))
    p.add_argument("--final-seeds", type=int, default=2, help="fresh seeds per host for the final comparison")
    p.add_argument("--data", default=str(CIFAR_ARCHIVE))
    p.add_argument("--work", default=str(ROOT / "runs" / "search-teacher"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # 2,000 validation images, not the proxy's 500: a score must separate rules a point apart.
    proxy = Proxy(proxy_data(args.data, 16, 3000, 2000), work / "search.jsonl")
    rng = random.Random(args.seed)
    search_pairs = [(h, 1000 + i) for i, h in enumerate(args.hosts)]
    final_pairs = [(h, 2000 + 100 * k + i) for k in range(args.final_seeds) for i, h in enumerate(args.hosts)]
    probs = {name: [1 / len(values)] * len(values) for name, values in SPACE.items()}
    scored: list[tuple[float, dict]] = []
    for it in range(args.iterations):
        draws = [{n: rng.choices(v, probs[n])[0] for n, v in SPACE.items()} for _ in range(args.population)]
        population = ([dict(BENCHMARK)] if it == 0 else []) + draws
        results = [(proxy.gain(c, search_pairs), c) for c in tqdm(population, desc=f"iteration {it + 1}")]
        scored += results
        results.sort(key=lambda r: r[0], reverse=True)
        probs = refit(probs, [c for _, c in results[: args.elite]], args.smoothing)
        print(f"iteration {it + 1}: best {results[0][0]:+.2f} {results[0][1]}; median {statistics.median(g for g, _ in results):+.2f}")
    best_score, best = max(scored, key=lambda r: r[0])
    benchmark_score = next(g for g, c in scored if c == BENCHMARK)
    fresh = {name: proxy.gain(c, final_pairs) for name, c in (("best", best), ("benchmark", BENCHMARK))}
    diffs = [100 * (proxy.val_acc(best, h, s) - proxy.val_acc(BENCHMARK, h, s)) for h, s in final_pairs]
    record = {
        "best": best,
        "search_gain": {"best": round(best_score, 3), "benchmark": round(benchmark_score, 3)},
        "fresh_gain": {k: round(v, 3) for k, v in fresh.items()},
        "fresh_best_minus_benchmark": {
            "mean": round(statistics.fmean(diffs), 3),
            "sd": round(statistics.stdev(diffs), 3) if len(diffs) > 1 else None,
            "n": len(diffs),
        },
        "episodes": len(proxy.done),
    }
    (work / "result.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
