"""The evidence report's section "Tamiyo on hosts she never saw".

The zoo's UNSEEN_HOSTS (esper.simic.host_zoo) were never used to pretrain Tamiyo. The
benchmark runs each of them alone (`host@NAME`), under the heuristic (`heuristic@NAME`)
and under Tamiyo (`tamiyo@NAME`) on its seeds; here every comparison is paired by seed
(tools/evidence_doc.py), per host, pooled over the hosts, and on the hosts Tamiyo knows.
Each target is met, not met, or not measured when an arm it needs was not run (the smoke
scale, or a run with --skip).
"""

from __future__ import annotations

from pathlib import Path

from evidence_doc import diff_against, mean_or_nan, paired, pts, seed_diffs, std, summarize, verdict_lines
from evidence_regime import ROOT, sha256_of

# heuristic-budget: the heuristic choosing each blueprint by the budget left, a candidate teacher.
KINDS = ("host", "heuristic", "heuristic-budget", "tamiyo")
VERSUS = (
    ("heuristic", "host"),
    ("heuristic-budget", "host"),
    ("heuristic-budget", "heuristic"),
    ("tamiyo", "host"),
    ("tamiyo", "heuristic"),
)
IN_DISTRIBUTION = (("tamiyo", "heuristic", "the benchmark host"), ("tamiyo-deep", "heuristic-deep", "the deeper host"))
MARGIN = 0.005  # target (1): Tamiyo's pooled lead over the heuristic, in test accuracy


def policy_record(path) -> dict:
    """The tamiyo arms' policy file as another machine can check it: its path in the
    repository (or its name) and sha256; an absolute path would name only this machine."""
    path = Path(path).resolve()
    name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    return {"file": name, "sha256": sha256_of(path)} if path.is_file() else {"file": name}


def unseen_hosts(arms: dict) -> list[str]:
    return sorted({arm.split("@", 1)[1] for arm in arms if "@" in arm})


def _cell(d: dict | None) -> str:
    return pts(d) if d else "—"


def host_table(runs: dict, arms: dict, name: str) -> tuple[list[str], dict]:
    """One unseen host: each arm's accuracy, growth and fossils, and the paired differences."""
    host_params = next((r.get("host_params") for (arm, _), r in runs.items() if arm.endswith("@" + name)), None)
    diffs = {f"{a} - {b}": diff_against(arms, f"{a}@{name}", f"{b}@{name}") for a, b in VERSUS}
    summary = {}
    lines = [
        f"### {name}" + (f" ({host_params:,} parameters)" if host_params else ""),
        "",
        "| arm | seeds | test accuracy (mean ± std) | params added (mean) | fossils per run | − host [95% CI] | − heuristic [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        a = arms.get(f"{kind}@{name}")
        if a is None:
            continue
        summary[kind] = {
            "seeds": a["seeds"],
            "test_acc_mean": mean_or_nan(a["test_acc"]),
            "test_acc_std": std(a["test_acc"]),
            "params_added_mean": mean_or_nan(a["params_added"]),
            "fossils_per_run": mean_or_nan([len(f) for f in a["fossils"] if f is not None]),
        }
        s = summary[kind]
        lines.append(
            f"| {kind} | {len(a['seeds'])} | {s['test_acc_mean']:.4f} ± {s['test_acc_std']:.4f} | {s['params_added_mean']:,.0f} | "
            f"{s['fossils_per_run']:.1f} | {_cell(diffs.get(f'{kind} - host'))} | {_cell(diffs.get(f'{kind} - heuristic'))} |"
        )
    return lines, {"host_params": host_params, "arms": summary, "diffs": diffs}


def pooled(arms: dict, hosts: list[str], kind: str = "tamiyo") -> dict | None:
    """`kind` minus the heuristic over every (unseen host, seed) pair both ran."""
    diffs = [d for name in hosts for d in seed_diffs(arms, f"{kind}@{name}", f"heuristic@{name}")]
    return paired(diffs) if diffs else None


def _not_run(arms: dict, needed: list[str]) -> str:
    return ", ".join(a for a in needed if a not in arms)


def targets(arms: dict, hosts: list[str]) -> list[tuple[str, bool | None, str]]:
    """The three targets Tamiyo is held to, each answered from the numbers."""
    out = []
    q = f"Pooled over the unseen hosts, Tamiyo beats the heuristic by at least {100 * MARGIN:g} points (paired 95% interval above zero)"
    pool = pooled(arms, hosts)
    if not hosts:
        out.append((q, None, "no unseen host was run"))
    elif missing := _not_run(arms, [f"{k}@{name}" for name in hosts for k in ("heuristic", "tamiyo")]):
        out.append((q, None, f"not run: {missing}"))
    elif pool is None or pool["n"] < 2:
        out.append((q, None, "fewer than two (host, seed) pairs ran both: no interval"))
    else:
        ok = pool["mean_diff"] >= MARGIN and pool["ci95"][0] > 0
        out.append((q, ok, f"tamiyo − heuristic {pts(pool)} over {pool['n']} (host, seed) pairs on {', '.join(hosts)}"))

    q = "On every unseen host Tamiyo beats the host alone (paired 95% interval above zero)"
    per_host = {name: diff_against(arms, f"tamiyo@{name}", f"host@{name}") for name in hosts}
    judged = {name: d for name, d in per_host.items() if d is not None and d["n"] > 1}
    detail = "; ".join(f"{name}: tamiyo − host {pts(d)}" for name, d in judged.items())
    if any(d["ci95"][0] <= 0 for d in judged.values()):  # one host short settles it, whatever is missing
        out.append((q, False, detail))
    elif not hosts:
        out.append((q, None, "no unseen host was run"))
    elif missing := _not_run(arms, [f"{k}@{name}" for name in hosts for k in ("host", "tamiyo")]):
        out.append((q, None, f"not run: {missing}"))
    elif len(judged) < len(hosts):
        out.append((q, None, f"fewer than two common seeds on {', '.join(n for n in hosts if n not in judged)}: no interval"))
    else:
        out.append((q, True, detail))

    q = "On the benchmark host Tamiyo is at least as accurate as the heuristic (mean paired difference ≥ 0)"
    d = diff_against(arms, "tamiyo", "heuristic")
    if missing := _not_run(arms, ["heuristic", "tamiyo"]):
        out.append((q, None, f"not run: {missing}"))
    elif d is None:
        out.append((q, None, "no seed ran both"))
    else:
        out.append((q, d["mean_diff"] >= 0, f"tamiyo − heuristic {pts(d)} on {d['n']} seeds"))
    return out


def transfer(runs: dict, policy: dict | None = None) -> tuple[list[str], dict]:
    """The section's markdown lines and its numbers, from the benchmark's runs by (arm, seed)."""
    arms, _ = summarize(runs)
    hosts = unseen_hosts(arms)
    which = "Tamiyo"
    if policy:
        which = f"`{policy['file']}`" + (f" (sha256 `{policy['sha256'][:12]}…`)" if "sha256" in policy else " (not found)")
    lines = [
        "## Tamiyo on hosts she never saw",
        "",
        f"The tamiyo arms run {which}, pretrained on the zoo's training hosts; the hosts below "
        "(`esper.simic.host_zoo.UNSEEN_HOSTS`) were held out of it. Each ran alone (host), under the heuristic and "
        "under Tamiyo (and under heuristic-budget, the same rule choosing each blueprint as the largest that fits "
        "the budget left), on the benchmark's data and seeds; differences are paired by seed, in points of test accuracy "
        "with 95% t intervals.",
        "",
    ]
    result = {"policy": policy, "hosts": {}}
    for name in hosts:
        table, result["hosts"][name] = host_table(runs, arms, name)
        lines += table + [""]
    if not hosts:
        lines += ["No unseen host was run.", ""]
    result["pooled"] = pooled(arms, hosts)
    result["in_distribution"] = {f"{a} - {b}": diff_against(arms, a, b) for a, b, _ in IN_DISTRIBUTION}
    lines += [
        "### Pooled, and on the hosts Tamiyo knows",
        "",
        "| comparison | paired diff [95% CI] | pairs |",
        "|---|---|---|",
        f"| tamiyo − heuristic, pooled over {len(hosts)} unseen hosts | {_cell(result['pooled'])} | "
        f"{result['pooled']['n'] if result['pooled'] else 0} |",
    ]
    if budget := pooled(arms, hosts, "heuristic-budget"):
        result["pooled_heuristic_budget"] = budget
        lines.append(f"| heuristic-budget − heuristic, pooled over the unseen hosts it ran on | {_cell(budget)} | {budget['n']} |")
    for a, b, where in IN_DISTRIBUTION:
        d = result["in_distribution"][f"{a} - {b}"]
        lines.append(f"| {a} − {b} on {where} | {_cell(d)} | {d['n'] if d else 0} |")
    answers = targets(arms, hosts)
    result["targets"] = [{"target": q, "met": ok, "detail": detail} for q, ok, detail in answers]
    lines += ["", "### Targets", ""] + verdict_lines(answers)
    return lines, result
