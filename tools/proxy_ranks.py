"""Does the pretraining proxy rank policies as the evidence regime does?

    python tools/proxy_ranks.py                       # after tools/evidence.py --scale cpu
    python tools/proxy_ranks.py --policy tamiyo-v1=runs/tamiyo-v1/tamiyo.yaml

Every (policy, host) the evidence log (runs/evidence-cpu/runs.jsonl) holds on all its
seeds, next to the host alone on the same seeds, is a point: its full-regime gain is the
mean paired difference in test accuracy (CIFAR-10 at 32x32, 10,000 images, 8 epochs).
The same policy then plays the pretraining proxy (tools/pretrain_tamiyo.py: 16x16,
3,000 images, 6 epochs) on the same host (the evidence host is the zoo's plain-w16-b3)
on `--seeds` seeds, against the host alone on those seeds, tested on 2,000 images.
Spearman's rank correlation of the two gains says whether the proxy orders policies as
the full regime does (1 is the same order), over every pair and among the policies of
each host that ran at least three. The deeper HostCNN has no proxy twin (five
pooling blocks leave nothing of a 16x16 image), so its arms are left out.

Each proxy episode's result is appended to WORK/proxy.jsonl as it ends, with the policy
that played it (a file's sha256, a rule's settings), so a rerun plays only what is new.

Arms map to policies by their name before "@": heuristic (the benchmark's rule),
heuristic-budget (the same rule, blueprints chosen by budget), random, tamiyo (the
shipped policy), and NAME=PATH for any other policy file. Writes OUT/proxy_ranks.json
and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evidence_regime import BLENDS, BLUEPRINTS, CIFAR_ARCHIVE, SCALES, sha256_of  # noqa: E402
from pretrain_tamiyo import proxy_data, proxy_episode  # noqa: E402

from esper.leyline import Vocabulary  # noqa: E402
from esper.runs.metrics import read_jsonl  # noqa: E402
from esper.simic.host_zoo import HOSTS  # noqa: E402
from esper.simic.policies import PRETRAINED, resolve_policy  # noqa: E402
from esper.simic.pretrain import proxy_env  # noqa: E402
from esper.tamiyo import HeuristicConfig  # noqa: E402

EVIDENCE_HOST = "plain-w16-b3"  # HostCNN(width=16, blocks=3), the evidence benchmark's host


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties share their mean rank)."""

    def ranks(x):
        order = sorted(range(len(x)), key=x.__getitem__)
        r = [0.0] * len(x)
        i = 0
        while i < len(x):
            j = i
            while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    return statistics.correlation(ranks(a), ranks(b))


def identity(spec: tuple) -> str:
    """What a cached proxy result was played by: a policy file's sha256, or a rule's settings."""
    path = Path(spec[0])
    return sha256_of(path) if path.is_file() else repr(spec)


def full_gains(log: Path, seeds: int, kinds: set[str]) -> dict[tuple[str, str], float]:
    """(kind, zoo host) -> mean paired test-accuracy gain over the host alone, in points."""
    runs = {(r["arm"], r["seed"]): r["test_acc"] for r in read_jsonl(log)}
    gains = {}
    for arm in sorted({a for a, _ in runs}):
        kind, _, host = arm.partition("@")
        base = f"host@{host}" if host else "host"
        if kind not in kinds or kind == "host":
            continue
        paired = [runs[(arm, s)] - runs[(base, s)] for s in range(seeds) if (arm, s) in runs and (base, s) in runs]
        if len(paired) == seeds:
            gains[(kind, host or EVIDENCE_HOST)] = 100 * statistics.fmean(paired)
    return gains


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log", default=str(ROOT / "runs" / "evidence-cpu" / "runs.jsonl"), help="the evidence benchmark's run log")
    p.add_argument("--data", default=str(CIFAR_ARCHIVE))
    p.add_argument("--seeds", type=int, default=6, help="proxy seeds per (policy, host)")
    p.add_argument("--policy", nargs="*", default=[], metavar="NAME=PATH", help="more tamiyo-like arms and their policy files")
    p.add_argument("--preferred", default="depthwise", help="the benchmark's preferred blueprint (its headroom phase)")
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--work", default=str(ROOT / "runs" / "proxy-ranks"), help="where proxy.jsonl keeps every proxy episode's result")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    vocab = Vocabulary(BLUEPRINTS, BLENDS, proxy_env().blend_steps)
    rule = HeuristicConfig.every_slot(args.preferred)
    specs = {
        "heuristic": ("heuristic", rule),
        "heuristic-budget": ("heuristic", dataclasses.replace(rule, blueprint_by="budget")),
        "random": ("random", None),
        "tamiyo": (str(PRETRAINED), None),
    }
    specs.update({name: (path, None) for name, path in (item.split("=", 1) for item in args.policy)})
    scale = SCALES["cpu"]
    full = {k: g for k, g in full_gains(Path(args.log), scale.seeds, set(specs)).items() if k[1] in HOSTS}
    if len(full) < 3:
        print(f"proxy_ranks: {len(full)} (policy, host) pairs with all seeds in {args.log}; run tools/evidence.py first", file=sys.stderr)
        return 2
    data = proxy_data(args.data, 16, 3000, 500, test=2000)
    env_cfg = dataclasses.replace(proxy_env(), contribution_samples=500)

    def test_acc(host: str, spec, seed: int) -> float:
        policy, policy_vocab, _ = resolve_policy(spec[0], vocab, heuristic=spec[1], seed=seed)
        return proxy_episode(data, host, policy, policy_vocab, seed, env=env_cfg, test=data.test)["test_acc"]

    cache_path = Path(args.work) / "proxy.jsonl"
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache = {(r["policy"], r["host"], r["seed"], r["id"]): r["test_acc"] for r in read_jsonl(cache_path)} if cache_path.exists() else {}
    hosts = sorted({h for _, h in full})
    todo = [("host", h) for h in hosts] + sorted(full)
    bar = tqdm(total=len(todo) * args.seeds, desc="proxy episodes")

    def played(kind: str, host: str, seed: int) -> float:
        """The test accuracy of `kind` on `host` and `seed`, from the cache when this policy played it."""
        spec = ("wait", None) if kind == "host" else specs[kind]
        key = (kind, host, seed, identity(spec))
        if key not in cache:
            cache[key] = test_acc(host, spec, seed)
            with open(cache_path, "a") as f:
                f.write(json.dumps({"policy": kind, "host": host, "seed": seed, "id": key[3], "test_acc": cache[key]}) + "\n")
        bar.update()
        return cache[key]

    accs = {(kind, h): [played(kind, h, s) for s in range(args.seeds)] for kind, h in todo}
    bar.close()
    proxy = {(kind, h): 100 * statistics.fmean(g - a for g, a in zip(accs[(kind, h)], accs[("host", h)])) for kind, h in full}

    keys = sorted(full)
    rho = spearman([full[k] for k in keys], [proxy[k] for k in keys])
    print(f"{'policy':>18} {'host':>18} {'full gain':>10} {'proxy gain':>11}")
    for k in keys:
        print(f"{k[0]:>18} {k[1]:>18} {full[k]:+10.2f} {proxy[k]:+11.2f}")
    print(f"Spearman rank correlation over {len(keys)} (policy, host) pairs: {rho:+.2f}")
    # Within a host, only the policies differ: the order a search on that host would see.
    within = {}
    for h in hosts:
        mine = [k for k in keys if k[1] == h]
        if len(mine) >= 3:
            within[h] = spearman([full[k] for k in mine], [proxy[k] for k in mine])
            print(f"  among the {len(mine)} policies on {h}: {within[h]:+.2f}")
    out = Path(args.out) / "proxy_ranks.json"
    record = {
        "seeds": {"full": scale.seeds, "proxy": args.seeds},
        "pairs": [{"policy": k[0], "host": k[1], "full_gain": round(full[k], 3), "proxy_gain": round(proxy[k], 3)} for k in keys],
        "spearman": round(rho, 3),
        "spearman_within_host": {h: round(r, 3) for h, r in within.items()},
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"proxy_ranks: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
