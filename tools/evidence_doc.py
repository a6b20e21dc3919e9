"""The evidence benchmark's outputs: paired statistics, evidence.json, evidence.md and its plots.

Every arm is compared with `host` seed by seed (the same initialisation and batch
order): the paired difference d_s = acc(arm, s) - acc(host, s), its mean, and the 95%
interval mean ± t(0.975, n-1) · sd(d) / sqrt(n).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from esper.runs.config import to_dict
from esper.runs.metrics import clean
from esper.tamiyo import mean_or_nan

# Student t quantiles t(0.975, df) for df = 1..30; beyond, the normal 1.96 is close enough.
# fmt: off
_T975 = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
]
# fmt: on
ARM_ORDER = [
    "host",
    "static",
    "random",
    "heuristic",
    "heuristic-budget",
    "static-same",
    "host-flops",
    "static-flops",
    "tamiyo",
    "host-deep",
    "heuristic-deep",
    "tamiyo-deep",
]
ARM_NOTES = {
    "host": "the host alone",
    "static": "the best static bigger model, trained from the first step",
    "random": "uniform over legal actions",
    "heuristic": "the hand-written gardener",
    "heuristic-budget": "the heuristic, each blueprint the largest that fits the budget left (a candidate teacher)",
    "static-same": "the blueprints the heuristic ended with, fossilized before the first step",
    "host-flops": "the host alone, for the epochs that spend the heuristic run's training FLOPs",
    "static-flops": "`static`, for the (fewer) epochs that spend the heuristic run's training FLOPs",
    "tamiyo": "the pretrained Tamiyo that ships with esper",
    "host-deep": "a deeper host alone (the reference of the arms on it)",
    "heuristic-deep": "the heuristic on the deeper host",
    "tamiyo-deep": "the pretrained Tamiyo that ships with esper, on the deeper host",
}
FIELDS = ("test_acc", "val_acc", "params_added", "train_flops", "epochs", "seconds", "fossils")


# Where the section that tools/evidence_text.py writes begins; rewriting the rest keeps it.
TEXT_SECTION = "<!-- TinyGPT on text: written by tools/evidence_text.py -->"


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def std(xs) -> float:
    xs = list(xs)
    if len(xs) < 2:
        return 0.0
    m = mean_or_nan(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def paired(diffs: list[float]) -> dict:
    """Mean of paired differences and its 95% t interval (a single pair has no interval)."""
    n = len(diffs)
    m = mean_or_nan(diffs)
    half = t975(n - 1) * std(diffs) / math.sqrt(n) if n > 1 else math.nan
    return {"mean_diff": m, "ci95": [m - half, m + half], "n": n}


def reference_of(arm: str) -> str:
    """The arm a run is paired with: for an arm on a zoo host (`KIND@NAME`) that host alone
    (`host@NAME`), the deeper host alone for every arm on the deeper host (named `...-deep`,
    or `...-deep-...` for a variant), the host alone for the rest."""
    if "@" in arm:  # before the `-deep` test: a zoo host's name may contain it
        return "host@" + arm.split("@", 1)[1]
    return "host-deep" if "-deep" in arm else "host"


def seed_diffs(arms: dict, arm: str, other: str) -> list[float]:
    """Test accuracy of `arm` minus `other`'s on each seed both ran (none if either is missing)."""
    if arm not in arms or other not in arms:
        return []
    theirs = dict(zip(arms[other]["seeds"], arms[other]["test_acc"]))
    return [acc - theirs[s] for s, acc in zip(arms[arm]["seeds"], arms[arm]["test_acc"]) if s in theirs]


def summarize(runs: dict) -> tuple[dict, dict]:
    """Per-arm lists by seed, and each arm's paired difference against its reference arm."""
    arms = {}
    for (arm, seed), r in sorted(runs.items(), key=lambda kv: kv[0][1]):
        if arm.startswith("static:"):
            continue
        a = arms.setdefault(arm, {"seeds": [], **{key: [] for key in FIELDS}})
        for key in FIELDS:
            a[key].append(r.get(key))  # runs logged before a field existed read None
        a["seeds"].append(seed)
    pairs = {}
    for arm in arms:
        ref = reference_of(arm)
        diffs = seed_diffs(arms, arm, ref) if arm != ref else []
        if diffs:
            pairs[arm] = {"reference": ref, **paired(diffs)}
    return arms, pairs


def verdicts(arms: dict, pairs: dict) -> list[tuple[str, bool | None, str]]:
    """The benchmark's three questions, each answered from the numbers."""
    out = []
    growth = [a for a in ("random", "heuristic", "tamiyo") if a in pairs]
    winners = [a for a in growth if pairs[a]["n"] > 1 and pairs[a]["ci95"][0] > 0]
    out.append(
        (
            "A growth policy beats the host alone (paired 95% interval above zero)",
            bool(winners) if growth else None,
            ", ".join(winners) or "none",
        )
    )
    if "tamiyo" in arms and "heuristic" in arms:
        t, h = mean_or_nan(arms["tamiyo"]["test_acc"]), mean_or_nan(arms["heuristic"]["test_acc"])
        tp, hp = mean_or_nan(arms["tamiyo"]["params_added"]), mean_or_nan(arms["heuristic"]["params_added"])
        ok = t > h or (abs(t - h) < 0.002 and tp < hp)
        out.append(
            (
                "Tamiyo beats the heuristic (mean test accuracy, or a tie with fewer parameters)",
                ok,
                f"tamiyo {t:.4f} (+{tp:,.0f} params) vs heuristic {h:.4f} (+{hp:,.0f})",
            )
        )
    if "static" in pairs:
        gain, added = pairs["static"]["mean_diff"], mean_or_nan(arms["static"]["params_added"])
        best = None
        for a in growth:
            share = pairs[a]["mean_diff"] / gain if gain > 0 else math.nan
            cost = mean_or_nan(arms[a]["params_added"]) / added if added > 0 else math.nan
            if share >= 0.7 and cost <= 0.5:
                best = f"{a}: {share:.0%} of static's gain with {cost:.0%} of its added parameters"
        shares = (
            "; ".join(
                f"{a} {pairs[a]['mean_diff'] / gain:.0%} of the gain, {mean_or_nan(arms[a]['params_added']) / added:.0%} of the parameters"
                for a in growth
            )
            if gain > 0 and added > 0
            else "static shows no gain"
        )
        out.append(
            ("A growth policy reaches 70% of static's gain with at most 50% of its added parameters", best is not None, best or shares)
        )
    out += growth_verdicts(arms, pairs)
    return out


def diff_against(arms: dict, arm: str, other: str) -> dict | None:
    """Paired differences arm - other over their common seeds, with the 95% interval."""
    diffs = seed_diffs(arms, arm, other)
    return paired(diffs) if diffs else None


def _common_seeds(arms: dict, *names: str) -> list[int]:
    if not all(n in arms for n in names):
        return []
    return sorted(set.intersection(*(set(arms[n]["seeds"]) for n in names)))


def _gains(arms: dict, arm: str, seeds: list[int]) -> list[float]:
    """`arm`'s test accuracy minus the host's, on each of `seeds`."""
    acc = {n: dict(zip(arms[n]["seeds"], arms[n]["test_acc"])) for n in (arm, "host")}
    return [acc[arm][s] - acc["host"][s] for s in seeds]


def pts(d: dict) -> str:
    return f"{100 * d['mean_diff']:+.2f} pts [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]"


def verdict_lines(answers) -> list[str]:
    """Each (question, met, detail) as a bullet; met None means an arm it needs was not run."""
    return [f"- **{'met' if ok else 'not met' if ok is not None else 'not measured'}**: {q}. {d}." for q, ok, d in answers]


def growth_verdicts(arms: dict, pairs: dict, grown: str = "heuristic") -> list[tuple[str, bool | None, str]]:
    """Does growth pay? The grown arm against its own modules from the start, against the
    baselines that spend its training FLOPs, and against the host alone on every host."""
    out = []
    both = _common_seeds(arms, grown, "static-same", "host")
    if both:
        gain = paired(_gains(arms, grown, both))["mean_diff"]
        ceiling = paired(_gains(arms, "static-same", both))["mean_diff"]
        share = gain / ceiling if ceiling > 0 else math.nan
        out.append(
            (
                f"{grown} reaches 90% of static-same's gain over the host (the same modules from the first step)",
                bool(share >= 0.9) if ceiling > 0 else None,
                f"{share:.0%}: {100 * gain:+.2f} against {100 * ceiling:+.2f} points on seeds {', '.join(map(str, both))}"
                if ceiling > 0
                else "static-same shows no gain",
            )
        )
    matched = [(b, diff_against(arms, b, grown)) for b in ("host-flops", "static-flops")]
    matched = [(b, d) for b, d in matched if d is not None]
    if matched:
        beaten = [b for b, d in matched if d["n"] > 1 and d["ci95"][0] > 0]
        judged = all(d["n"] > 1 for _, d in matched)  # one seed has no interval to judge by
        flops = {b: mean_or_nan([x / y for x, y in zip(arms[b]["train_flops"], arms[grown]["train_flops"]) if x and y]) for b, _ in matched}
        out.append(
            (
                f"At equal training FLOPs {grown} is as accurate as the host and static (none better beyond its 95% interval)",
                (not beaten) if judged or beaten else None,
                "; ".join(f"{b} − {grown} {pts(d)} at {flops[b]:.0%} of its FLOPs ({d['n']} seeds)" for b, d in matched),
            )
        )
    hosts = [(grown, "host"), (f"{grown}-deep", "host-deep")]
    judged = [(a, ref, diff_against(arms, a, ref)) for a, ref in hosts]
    judged = [(a, ref, d) for a, ref, d in judged if d is not None and d["n"] > 1]
    if judged:
        worse = [a for a, _, d in judged if d["ci95"][1] < 0]
        out.append(
            (
                "On every host, growth is never worse than the host alone beyond its 95% interval",
                not worse,
                "; ".join(f"{a} − {ref} {pts(d)}" for a, ref, d in judged),
            )
        )
    return out


def _pareto(runs: dict, path: Path) -> None:
    """Every run's test accuracy against the parameters it added and the training FLOPs it spent."""
    from esper.runs.report import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    markers = "os^vD<>pP*Xh"
    for ax, key, label in ((axes[0], "params_added", "parameters added to the host"), (axes[1], "train_flops", "training FLOPs")):
        for i, arm in enumerate(ARM_ORDER):
            pts = [(r[key], r["test_acc"]) for (a, _), r in runs.items() if a == arm and r.get(key) is not None]
            if pts:
                ax.scatter(*zip(*pts), s=28, label=arm, color=f"C{i % 10}", marker=markers[i % len(markers)], alpha=0.8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title("test accuracy against added parameters")
    axes[1].set_title("test accuracy against training compute")
    axes[1].legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def _slot_table(arms: dict) -> list[str]:
    """The benchmark host's arms only: a zoo host's slots are other slots (evidence_transfer.py)."""
    counts = Counter()
    for arm in [a for a in ARM_ORDER if a in arms]:
        for fossils in arms[arm]["fossils"]:
            for slot, blueprint in fossils.items():
                counts[(arm, slot, blueprint)] += 1
    if not counts:
        return ["No run fossilized a seed."]
    cells = sorted({(slot, bp) for _, slot, bp in counts})
    lines = ["| arm | " + " | ".join(f"{s} · {b}" for s, b in cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for arm in [a for a in ARM_ORDER if a in arms]:
        lines.append(f"| {arm} | " + " | ".join(str(counts[(arm, s, b)] or "") for s, b in cells) + " |")
    return lines


def write_evidence(bench, outcome: dict) -> tuple[Path, Path]:
    from evidence_transfer import policy_record, transfer  # here, not at the top: it imports this module

    out = bench.out
    out.mkdir(parents=True, exist_ok=True)
    scale, runs = bench.scale, bench.runs
    arms, pairs = summarize(runs)
    headroom = {k[0]: r["test_acc"] for k, r in runs.items() if k[1] == 0 and (k[0] == "host" or k[0].startswith("static:"))}
    regime = {
        "data": bench.dataset,
        "train_images": len(bench.data.train),
        "val_images": len(bench.data.val),
        "test_images": len(bench.data.test),
        "host": f"HostCNN(width={scale.width})",
        "deep_host": f"HostCNN(width={scale.width}, blocks={scale.deep_blocks})",
        "device": scale.device,
        "env": to_dict(scale.env),
        "reward": to_dict(scale.reward),
        "static": outcome["static"],
        "heuristic_prefers": outcome["preferred"],
        "tamiyo": policy_record(outcome["tamiyo"]),
    }
    transfer_lines, transfer_json = transfer(runs, regime["tamiyo"])
    result = {
        "scale": scale.name,
        "regime": regime,
        "headroom": headroom,
        "arms": arms,
        "paired": pairs,
        "verdicts": [{"question": q, "met": ok, "detail": d} for q, ok, d in verdicts(arms, pairs)],
        "transfer": transfer_json,
        "seconds": outcome["seconds"],
        "phases": outcome["phases"],
        "run_seconds": sum(r["seconds"] for r in runs.values()),
    }
    prefix = f"evidence-{scale.name}" if scale.name != "cpu" else "evidence"
    json_path = out / f"{prefix}.json"
    json_path.write_text(json.dumps(clean(result), indent=2))
    _pareto(runs, out / f"{prefix}-pareto.png")

    host_params = runs[("host", 0)]["host_params"]
    run_minutes = sum(r["seconds"] for r in runs.values()) / 60
    lines = [
        f"# Does growth help? Evidence at scale `{scale.name}`",
        "",
        f"Produced by `python tools/evidence.py --scale {scale.name}`; its last invocation took "
        f"{outcome['seconds'] / 60:.1f} minutes ({', '.join(f'{k} {v / 60:.1f}' for k, v in outcome['phases'].items())} "
        f"min; runs already in the log are not repeated) and the {len(runs)} evaluation runs "
        f"{run_minutes:.1f} minutes of one process between them. The raw numbers are in `evidence.json`.",
        "",
        f"**Regime.** {regime['host']} ({host_params:,} parameters) on {len(bench.data.train):,} training images of "
        f"`{bench.dataset.get('file', bench.dataset['name'])}`, {len(bench.data.val):,} validation and "
        f"{len(bench.data.test):,} test images; "
        f"{scale.env.epochs} epochs, {scale.env.decisions_per_epoch} decisions per epoch, AdamW lr {scale.env.lr} with "
        f"cosine decay, batch {scale.env.batch_size}; reward: growth up to {scale.reward.param_budget:.0%} of the host "
        f"free, {scale.reward.param_cost} per host-size beyond. Seeds {bench.eval_seeds[0]}..{bench.eval_seeds[-1]}, "
        f"each arm from the same initialisation and batch order.",
        "",
        "## Headroom (seed 0)",
        "",
        "| model | test accuracy | parameters added |",
        "|---|---|---|",
    ]
    for key, acc in headroom.items():
        lines.append(f"| {key} | {acc:.4f} | {runs[(key, 0)]['params_added']:,} |")
    lines += [
        "",
        f"`static` below is `{outcome['static']}`, the candidate with the best validation accuracy. The "
        f"heuristic prefers `{outcome['preferred']}`, the blueprint of the best candidate within the reward's "
        "parameter budget.",
        "",
        "## Arms",
        "",
        "| arm | what | test accuracy (mean ± std) | paired diff vs reference [95% CI] | params added (mean) "
        "| epochs | training GFLOPs (mean) | seconds (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in [a for a in ARM_ORDER if a in arms]:
        a, p = arms[arm], pairs.get(arm)
        diff = f"{pts(p)} vs {p['reference']}" if p else "—"
        flops = [f for f in a["train_flops"] if f is not None]
        epochs = sorted({e for e in a["epochs"] if e is not None})
        lines.append(
            f"| {arm} | {ARM_NOTES[arm]} | {mean_or_nan(a['test_acc']):.4f} ± {std(a['test_acc']):.4f} | {diff} | "
            f"{mean_or_nan(a['params_added']):,.0f} | {'–'.join(map(str, epochs[:: max(1, len(epochs) - 1)])) or '?'} | "
            f"{mean_or_nan(flops) / 1e9:,.0f} | {mean_or_nan(a['seconds']):.0f} |"
        )
    lines += ["", "## Verdicts", ""] + verdict_lines(verdicts(arms, pairs)) + [""] + transfer_lines
    lines += ["", "## Where seeds were fossilized (runs per slot · blueprint)", ""] + _slot_table(arms)
    lines += ["", "## Plots", "", f"![Pareto]({prefix}-pareto.png)", ""]
    md_path = out / f"{prefix}.md"
    text_section = md_path.read_text().partition(TEXT_SECTION)[1:] if md_path.exists() else ("", "")
    md_path.write_text("\n".join(lines) + "\n" + ("\n" + "".join(text_section) if text_section[0] else ""))
    return json_path, md_path
