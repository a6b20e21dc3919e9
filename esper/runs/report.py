"""Reports: PNG plots (matplotlib, Agg) and a Markdown summary of a run directory.

Reads DIR/metrics.jsonl (plus summary.json and config.yaml when present) and writes
DIR/report.md linking the plots it made:

    esper grow runs      accuracy.png (train/val accuracy, edits marked, host alone if measured),
                         loss.png (train/val loss; for next-token tasks also in bits per
                         character or byte, or as perplexity),
                         slots.png (each slot's stage over time, alpha drawn inside its row),
                         params.png, all four on one epoch axis from 0 (before training);
                         rewards.png (reward components per decision) only when a trained
                         Tamiyo grew it: a reward is what she was trained on, and says
                         nothing about a heuristic's run
    esper train runs     episodes.png (return, final accuracy, fossils per episode),
                         heads.png (per-head entropy, explained variance, value loss, KL, clipping),
                         actions.png (share of each op per update), slots.png (the last episode)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from esper.runs.metrics import JSONL_NAME, read_jsonl

STAGE_COLORS = {
    "DORMANT": "#eeeeee",
    "GERMINATED": "#c6dbef",
    "TRAINING": "#6baed6",
    "BLENDING": "#fd8d3c",
    "FOSSILIZED": "#31a354",
    "CULLED": "#de2d26",
}
OP_COLORS = {"WAIT": "#bdbdbd", "GERMINATE": "#6baed6", "ADVANCE": "#fd8d3c", "CULL": "#de2d26", "FOSSILIZE": "#31a354"}


def loss_in_units(loss: float, unit: str) -> str:
    """A next-token loss L (nats per prediction) as it is usually read: L / ln 2 bits per
    character (or byte), or perplexity e^L for other tokens."""
    if unit in ("character", "byte"):
        return f"{loss / math.log(2):.3f} bits per {unit}"
    return f"perplexity {math.exp(min(loss, 700.0)):.2f}"


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def trained_policy(summary: dict) -> bool:
    """Whether a grow run's policy was a trained Tamiyo (whose reward and return mean
    something), not a built-in one: `summary["trained_policy"]` when the writer said so,
    else a policy named by its file (`runs/NAME/tamiyo.pt`) or Tamiyo's class."""
    if isinstance(summary.get("trained_policy"), bool):
        return summary["trained_policy"]
    policy = str(summary.get("policy", ""))
    return policy.endswith(".pt") or policy == "TamiyoPolicy"


def pyplot():
    """matplotlib.pyplot on the Agg backend, which needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> str:
    """Write `fig` to `path` and close it; returns the file name a report links to."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path.name


# ---- shared ----------------------------------------------------------------------------------
EPOCH_LABEL = "epoch (0: before the first epoch)"


def timeline_row(plane) -> dict[str, list]:
    """slot -> [stage name, alpha, blueprint]: one row of the timeline `plot_timeline` draws."""
    return {i: [s.stage.name, round(float(s.alpha), 4), s.blueprint] for i, s in plane.slots.items()}


def reopened_slots(slots) -> dict[str, str]:
    """Slots opened after a fossil (`block3+1` after the fossil in `block3`) -> that slot."""
    return {s: s.rsplit("+", 1)[0] for s in slots if "+" in s and s.rsplit("+", 1)[1].isdigit()}


def plot_timeline(timeline: list[dict], path: Path, title: str, ticks_per_epoch: int = 1, xlim: tuple[float, float] | None = None) -> str:
    """Stage of every slot over time as colored bars; alpha as a black line inside each row.
    The legend also says which slots were opened after a fossil (`slot+1`)."""
    plt = pyplot()
    slots: list[str] = []
    for row in timeline:
        for slot in row:
            if slot not in slots:
                slots.append(slot)
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(slots) + 1.6))
    for y, slot in enumerate(slots):
        for t, row in enumerate(timeline[1:], start=1):
            if slot not in row:
                continue
            stage = row[slot][0]
            x0 = (t - 1) / ticks_per_epoch
            ax.barh(y, 1 / ticks_per_epoch, left=x0, height=0.8, color=STAGE_COLORS.get(stage, "#999999"), edgecolor="white")
            blueprint = row[slot][2] if len(row[slot]) > 2 else None
            if blueprint and stage in ("GERMINATED", "FOSSILIZED") and timeline[t - 1].get(slot, [None])[0] != stage:
                ax.text(x0 + 0.05, y, blueprint, va="center", fontsize=7)
        # alpha after each tick, drawn inside the row: bottom edge 0, top edge 1 (rows run downwards)
        points = [(t / ticks_per_epoch, row[slot][1]) for t, row in enumerate(timeline) if slot in row]
        if any(a > 0 for _, a in points):
            ax.plot([x for x, _ in points], [y + 0.4 - 0.8 * a for _, a in points], color="black", linewidth=1.2)
    ax.set_yticks(range(len(slots)), slots)
    ax.invert_yaxis()
    ax.set_xlabel(EPOCH_LABEL)
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in STAGE_COLORS.values()]
    reopened = reopened_slots(slots)
    ax.legend(
        handles + [plt.Line2D([], [], color="black")] + [plt.Line2D([], [], linestyle="none")] * len(reopened),
        list(STAGE_COLORS) + ["alpha"] + [f"{s}: slot opened after\nthe fossil in {base}" for s, base in reopened.items()],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
    )
    return save_figure(fig, path)


# ---- esper grow ---------------------------------------------------------------------------------
def _grow_plots(run_dir: Path, epochs: list[dict], summary: dict) -> list[tuple[str, str]]:
    """accuracy, loss, slots and params on one x axis: epochs from 0, before the first
    (decision d lies at d / decisions per epoch); rewards only for a trained Tamiyo's run."""
    plt = pyplot()
    grown = [r for r in epochs if r.get("run", "grown") == "grown"]
    baseline = [r for r in epochs if r.get("run") == "baseline"]
    out = []
    x = [r["epoch"] for r in grown]
    end = max(x + [r["epoch"] for r in baseline] + [0])
    pad = 0.03 * end if end else 0.5
    xlim = (-pad, end + pad)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    # Epoch 0 is the model before the first epoch (for esper grow the untrained host, which
    # its host-alone twin starts from too: the same weights, seed and data); only its
    # validation accuracy was measured.
    start = _num(summary.get("initial_val_acc"))
    x0, v0 = ([0.0], [start]) if math.isfinite(start) else ([], [])
    ax.plot(x, [_num(r["train_acc"]) for r in grown], label="train (grown)", color="#3182bd", linestyle=":")
    ax.plot(x0 + x, v0 + [_num(r["val_acc"]) for r in grown], label="validation (grown)", color="#3182bd", marker="o")
    if baseline:
        base_start = _num((summary.get("baseline") or {}).get("initial_val_acc", start))
        bx0, bv0 = ([0.0], [base_start]) if math.isfinite(base_start) else ([], [])
        ax.plot(
            bx0 + [r["epoch"] for r in baseline],
            bv0 + [_num(r["val_acc"]) for r in baseline],
            label="validation (host alone)",
            color="#636363",
            marker="s",
            linestyle="--",
        )
    per_epoch = max(1, round(grown[-1]["step"] / grown[-1]["epoch"])) if grown and grown[-1]["epoch"] else 1
    for r in grown:
        op = r["edit"]["op"]
        if op != "WAIT":
            at = _edit_at(r, per_epoch)
            ax.axvline(at, color=OP_COLORS[op], alpha=0.5)
            ax.annotate(
                f"{op.lower()} {r['edit'].get('slot', '')}",
                (at + 0.04, 0.03),
                xycoords=("data", "axes fraction"),
                rotation=90,
                fontsize=7,
                color=OP_COLORS[op],
            )
    if "test_acc" in summary:
        ax.axhline(_num(summary["test_acc"]), color="#3182bd", alpha=0.3, label=f"test (grown) {summary['test_acc']:.3f}")
    if "baseline" in summary and summary["baseline"].get("test_acc") is not None:
        ax.axhline(
            _num(summary["baseline"]["test_acc"]),
            color="#636363",
            alpha=0.3,
            label=f"test (host alone) {summary['baseline']['test_acc']:.3f}",
        )
    ax.set_xlim(*xlim)
    ax.set_xlabel(EPOCH_LABEL)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy (vertical lines: edits applied before that epoch's training)")
    ax.legend(fontsize=8)
    out.append(("Accuracy", save_figure(fig, run_dir / "accuracy.png")))
    out.append(("Loss", _loss_plot(plt, run_dir / "loss.png", grown, baseline, summary, xlim)))

    timeline = summary.get("timeline") or [{}] + [r["slots"] for r in grown]
    out.append(("Seed slots", plot_timeline(timeline, run_dir / "slots.png", "Seed slots: stage and alpha", per_epoch, xlim)))

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([0] + x, [grown[0]["host_params"]] + [r["params"] for r in grown], marker="o", label="grown model")
    ax.axhline(grown[0]["host_params"], color="#636363", linestyle="--", label="host")
    ax.set_xlim(*xlim)
    ax.set_xlabel(EPOCH_LABEL)
    ax.set_ylabel("parameters")
    ax.set_title("Parameters over time")
    ax.legend(fontsize=8)
    out.append(("Parameters", save_figure(fig, run_dir / "params.png")))

    # A reward is what Tamiyo is trained on: it says nothing about a built-in policy's run,
    # and a Gardener in someone's loop earns none.
    if not trained_policy(summary) or "reward" not in grown[0]:
        return out
    fig, ax = plt.subplots(figsize=(8, 3.5))
    components = [k for k in grown[0]["reward"] if k != "total"]
    bottom_pos, bottom_neg = [0.0] * len(grown), [0.0] * len(grown)
    for k in components:
        values = [_num(r["reward"][k]) for r in grown]
        base = [bp if v >= 0 else bn for v, bp, bn in zip(values, bottom_pos, bottom_neg)]
        ax.bar(x, values, bottom=base, width=0.6 / per_epoch, label=k)
        bottom_pos = [bp + max(v, 0) for v, bp in zip(values, bottom_pos)]
        bottom_neg = [bn + min(v, 0) for v, bn in zip(values, bottom_neg)]
    ax.plot(x, [_num(r["reward"]["total"]) for r in grown], color="black", marker=".", label="total")
    ax.set_xlim(*xlim)
    ax.set_xlabel(EPOCH_LABEL)
    ax.set_title("Tamiyo's reward components per decision")
    ax.legend(fontsize=7, ncol=4)
    out.append(("Rewards", save_figure(fig, run_dir / "rewards.png")))
    return out


def _edit_at(record: dict, per_epoch: int) -> float:
    """The epoch an edit took effect, unless the record says (`edit_at`): esper grow applies
    an edit before its step's training; a Gardener after its epoch."""
    return record.get("edit_at", (record["step"] - 1) / per_epoch)


def _loss_plot(plt, path: Path, grown: list[dict], baseline: list[dict], summary: dict, xlim: tuple[float, float]) -> str:
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([r["epoch"] for r in grown], [_num(r.get("train_loss")) for r in grown], label="train (grown)", color="#3182bd", linestyle=":")
    ax.plot([r["epoch"] for r in grown], [_num(r.get("val_loss")) for r in grown], label="validation (grown)", color="#3182bd", marker="o")
    if baseline:
        ax.plot(
            [r["epoch"] for r in baseline],
            [_num(r.get("val_loss")) for r in baseline],
            label="validation (host alone)",
            color="#636363",
            marker="s",
            linestyle="--",
        )
    ax.set_xlim(*xlim)
    ax.set_xlabel(EPOCH_LABEL)
    ax.set_ylabel("loss (nats per prediction)")
    unit = summary.get("unit", "token")
    if summary.get("task") == "next_token" and unit in ("character", "byte"):
        ax.secondary_yaxis("right", functions=(lambda v: v / math.log(2), lambda v: v * math.log(2))).set_ylabel(f"bits per {unit}")
    elif summary.get("task") == "next_token":
        ax.secondary_yaxis("right", functions=(np.exp, np.log)).set_ylabel("perplexity")
    ax.set_title("Next-token loss" if summary.get("task") == "next_token" else "Loss")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def verdict(summary: dict) -> str | None:
    """One line: the grown model against its host-alone twin (same seed, data and epochs)
    on the test split, by test loss for next-token tasks and accuracy otherwise; None
    without a baseline."""
    base = summary.get("baseline")
    if not base or summary.get("test_acc") is None or base.get("test_acc") is None:
        return None
    added = f"{summary.get('param_ratio', 0.0):+.1%} parameters"
    if summary.get("task") == "next_token":
        diff = base["test_loss"] - summary["test_loss"]  # positive: the grown model's loss is lower
        numbers = f"test loss {summary['test_loss']:.4f} against {base['test_loss']:.4f} for the host alone ({-diff:+.4f}, {added})"
    else:
        diff = summary["test_acc"] - base["test_acc"]
        numbers = (
            f"test accuracy {summary['test_acc']:.3f} against {base['test_acc']:.3f} for the host alone ({100 * diff:+.1f} points, {added})"
        )
    return f"{'growth helped' if diff > 0 else 'growth did not help'} on this seed: {numbers}"


def _edit_lines(grown: list[dict]) -> list[str]:
    """The policy's edits other than WAIT, one table row each, at the epoch they took effect."""
    per_epoch = max(1, round(grown[-1]["step"] / grown[-1]["epoch"])) if grown and grown[-1]["epoch"] else 1
    rows = []
    for r in grown:
        edit = r.get("edit") or {}
        if edit.get("op", "WAIT") == "WAIT":
            continue
        what = " ".join(
            [edit["op"].lower()]
            + ([f"`{edit['blueprint']}`"] if edit.get("blueprint") else [])
            + ([f"at `{edit['slot']}`"] if edit.get("slot") else [])
            + ([f"({edit['blend']} blend over {edit['steps']} decisions)"] if edit.get("blend") and edit.get("steps") else [])
        )
        rows.append(f"| {_edit_at(r, per_epoch):g} | {what} | {r.get('params', 'n/a'):,} |")
    if not rows:
        return ["The policy made no edit: every decision was WAIT."]
    return ["| epoch | edit | parameters after it |", "| --- | --- | --- |", *rows]


def _grow_table(summary: dict) -> list[str]:
    said = verdict(summary)
    lines = ([f"**Verdict: {said}.**", ""] if said else []) + ["| | grown | host alone |", "| --- | --- | --- |"]
    base = summary.get("baseline", {})

    def fmt(v):
        return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    def flops(v):
        return "n/a" if v is None else f"{v:.3g}"

    lines.append(f"| final validation accuracy | {fmt(summary.get('val_acc'))} | {fmt(base.get('val_acc'))} |")
    lines.append(f"| test accuracy | {fmt(summary.get('test_acc'))} | {fmt(base.get('test_acc'))} |")
    if summary.get("task") == "next_token":
        unit = summary.get("unit", "token")

        def loss(s):
            return "n/a" if s.get("test_loss") is None else f"{s['test_loss']:.3f} ({loss_in_units(s['test_loss'], unit)})"

        lines.append(f"| test loss per {unit} | {loss(summary)} | {loss(base)} |")
    lines.append(f"| parameters | {summary.get('params', 'n/a'):,} | {base.get('params', summary.get('host_params', 0)):,} |")
    lines.append(f"| wall time (s) | {fmt(summary.get('wall_seconds'))} | {fmt(base.get('wall_seconds'))} |")
    # The baseline's own count where it ran; else the host alone's cost of the same examples.
    host_flops = base.get("train_flops", summary.get("host_train_flops"))
    lines.append(f"| training FLOPs | {flops(summary.get('train_flops'))} | {flops(host_flops)} |")
    lines.append("")
    fossils = ", ".join(summary.get("fossil_blueprints") or []) or "none"
    setting = ", ".join(
        ([summary["data"]] if "data" in summary else [])
        + ([f"{summary['train_images']} training images"] if "train_images" in summary else [])
        + [f"{summary.get('epochs', '?')} epochs"]
    )
    outcome = (
        f"{summary.get('germinated', 0)} germinated, {summary.get('fossilized', 0)} fossilized ({fossils}), "
        f"{summary.get('culled', 0)} culled"
    )
    if trained_policy(summary) and summary.get("return") is not None:
        outcome += f"; Tamiyo's return {summary['return']:.3f}"
    lines.append(f"Policy `{summary.get('policy', '?')}` on `{summary.get('host', '?')}` ({setting}): {outcome}.")
    tp = summary.get("throughput", {})
    if tp:
        lines.append(
            f"Throughput: {tp.get('images_per_second', 0):.0f} host images/s, {tp.get('decisions_per_second', 0):.3f} decisions/s."
        )
    return lines


# ---- esper train --------------------------------------------------------------------------------------
def _train_plots(run_dir: Path, episodes: list[dict], updates: list[dict], ticks_per_epoch: int = 1) -> list[tuple[str, str]]:
    plt = pyplot()
    out = []
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    for phase, color in (("warm_start", "#fd8d3c"), ("ppo", "#3182bd")):
        rows = [(i, r) for i, r in enumerate(episodes) if r.get("phase") == phase]
        if not rows:
            continue
        xs = [i for i, _ in rows]
        label = "heuristic warm start" if phase == "warm_start" else "PPO"
        axes[0].scatter(xs, [_num(r["return"]) for _, r in rows], s=12, color=color, label=label)
        axes[1].scatter(xs, [_num(r["val_acc"]) for _, r in rows], s=12, color=color)
        axes[2].scatter(xs, [_num(r["fossilized"]) for _, r in rows], s=12, color=color)
    axes[0].set_ylabel("return")
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel("final val accuracy")
    axes[2].set_ylabel("seeds fossilized")
    axes[2].set_xlabel("episode")
    axes[0].set_title("Episodes")
    out.append(("Episodes", save_figure(fig, run_dir / "episodes.png")))

    if updates:
        u = [r["update"] for r in updates]
        fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
        heads = [k.split("/", 1)[1] for k in updates[0] if k.startswith("entropy_norm/")]
        for head in heads:
            axes[0, 0].plot(u, [_num(r.get(f"entropy_norm/{head}")) for r in updates], marker=".", label=head)
        axes[0, 0].set_title("entropy per head (normalised, 1 = uniform)")
        axes[0, 0].set_ylim(bottom=0)
        axes[0, 0].legend(fontsize=7)
        axes[0, 1].plot(u, [_num(r.get("explained_variance")) for r in updates], marker=".", color="#31a354")
        axes[0, 1].axhline(0, color="#999999", linewidth=0.8)
        axes[0, 1].set_title("explained variance (critic)")
        axes[1, 0].plot(u, [_num(r.get("value_loss")) for r in updates], marker=".", color="#756bb1")
        axes[1, 0].set_title("value loss")
        axes[1, 0].set_yscale("log")
        axes[1, 1].plot(u, [_num(r.get("approx_kl")) for r in updates], marker=".", label="approx KL")
        axes[1, 1].plot(u, [_num(r.get("clip_fraction")) for r in updates], marker=".", label="clip fraction")
        axes[1, 1].set_title("policy change per update")
        axes[1, 1].legend(fontsize=7)
        for ax in axes[1]:
            ax.set_xlabel("PPO update")
        out.append(("PPO health", save_figure(fig, run_dir / "heads.png")))

        fig, ax = plt.subplots(figsize=(8, 3.5))
        ops = list(updates[0]["actions"])
        totals = [max(sum(r["actions"].values()), 1) for r in updates]
        shares = [[r["actions"].get(op, 0) / t for r, t in zip(updates, totals)] for op in ops]
        ax.stackplot(u, shares, labels=ops, colors=[OP_COLORS.get(op, "#999999") for op in ops])
        ax.set_ylim(0, 1)
        ax.set_xlabel("PPO update")
        ax.set_ylabel("share of actions")
        ax.set_title("Actions per update (all WAIT = collapse)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        out.append(("Actions", save_figure(fig, run_dir / "actions.png")))

    last = next((r for r in reversed(episodes) if r.get("timeline")), None)
    if last is not None:
        title = f"Last episode ({last['phase']} #{last['episode']}): stage and alpha"
        out.append(("Last episode's slots", plot_timeline(last["timeline"], run_dir / "slots.png", title, ticks_per_epoch)))
    return out


def _train_lines(episodes: list[dict], updates: list[dict], warm: list[dict]) -> list[str]:
    ppo = [r for r in episodes if r.get("phase") == "ppo"]
    lines = [
        f"{len(ppo)} PPO episodes, {len(updates)} updates"
        + (f", after {len([r for r in episodes if r.get('phase') == 'warm_start'])} heuristic warm-start episodes" if warm else "")
        + "."
    ]
    if warm:
        lines.append(f"Warm start: behaviour cloning reached {_num(warm[-1].get('agreement')):.1%} agreement with the heuristic.")
    if updates:
        first, last = updates[0], updates[-1]
        lines += ["", "| | first update | last update |", "| --- | --- | --- |"]
        for key, label in (
            ("return_mean", "mean return"),
            ("val_acc_mean", "mean final val accuracy"),
            ("fossilized_per_episode", "fossils per episode"),
            ("wait_fraction", "WAIT share"),
            ("explained_variance", "explained variance"),
            ("approx_kl", "approx KL"),
        ):
            lines.append(f"| {label} | {_num(first.get(key)):.3f} | {_num(last.get(key)):.3f} |")
        for key in (k for k in last if k.startswith("entropy_norm/")):
            lines.append(f"| entropy ({key.split('/')[1]}, normalised) | {_num(first.get(key)):.3f} | {_num(last.get(key)):.3f} |")
        tp = last.get("throughput", {})
        lines.append("")
        lines.append(
            f"Throughput (last round): {tp.get('images_per_second', 0):.0f} host images/s, "
            f"{tp.get('decisions_per_second', 0):.3f} decisions/s."
        )
        if last.get("warnings"):
            lines += ["", "Health warnings at the last update:", *[f"- {w}" for w in last["warnings"]]]
        else:
            lines += ["", "No health warning at the last update."]
    return lines


def make_report(run_dir) -> Path:
    """Write the plots and report.md for an `esper grow` or `esper train` directory."""
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / JSONL_NAME)
    if not records:
        raise FileNotFoundError(f"{run_dir} holds no {JSONL_NAME}: run `esper grow` or `esper train` with --out {run_dir}")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    epochs = [r for r in records if r.get("kind") == "epoch"]
    episodes = [r for r in records if r.get("kind") == "episode"]
    updates = [r for r in records if r.get("kind") == "update"]
    warm = [r for r in records if r.get("kind") == "warm_start"]

    lines = [f"# esper report: {run_dir.name}", ""]
    if epochs:
        grown = [r for r in epochs if r.get("run", "grown") == "grown"]
        lines += ["## Growth", "", *_grow_table(summary), "", "### Edits", "", *_edit_lines(grown), ""]
        plots = _grow_plots(run_dir, epochs, summary)
        slots = {slot for row in summary.get("timeline") or [r.get("slots") or {} for r in grown] for slot in row}
        notes = {
            "Seed slots": [f"`{s}` is a slot opened after the fossil in `{base}`." for s, base in sorted(reopened_slots(slots).items())]
        }
    else:
        lines += ["## Training", "", *_train_lines(episodes, updates, warm), ""]
        ticks = 1
        if (run_dir / "config.yaml").exists():
            import yaml

            saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            ticks = int((saved.get("env") or {}).get("decisions_per_epoch", 1))
        plots = _train_plots(run_dir, episodes, updates, ticks)
        notes = {}
    for title, name in plots:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
        if notes.get(title):
            lines += [" ".join(notes[title]), ""]
    files = [
        f
        for f in ("config.yaml", "metrics.jsonl", "summary.json", "edits.yaml", "tamiyo.pt", "checkpoint.pt", "model")
        if (run_dir / f).exists()
    ]
    lines += ["## Files", "", *[f"- [{f}]({f})" for f in files], ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
