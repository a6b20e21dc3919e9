"""`esper grow`: grow one host with a policy and write what came of it.

    esper grow --policy heuristic --host examples/host_cnn.py --data synthetic --epochs 8 --out runs/demo
    esper grow --host examples/tiny_gpt.py --data text:README.md --epochs 4 --out runs/gpt --baseline
    esper grow --policy runs/NAME/tamiyo.pt --host examples/host_cnn.py --out runs/grown   # data and settings from training

--policy is a trained Tamiyo (tamiyo.pt or checkpoint.pt from `esper train`), `heuristic`
(the default), `random`, or `wait` (never grow: the host alone). Without --host, a trained policy's host
is the model file its settings name, run only with --trust-host-code. DIR gets model/
(esper.save: esper.load(DIR/model, host=...) or `esper export DIR/model --host MODEL.py`
rebuild it), edits.yaml (the edit log: esper.replay rebuilds the structure), metrics.jsonl
(one record per decision), summary.json, and report.md with its plots. --baseline also
trains the host alone on the same data, seed and epochs, for comparison.

Under torchrun (`torchrun --nproc_per_node N -m esper grow ...`) every rank trains its
shard of each batch with DistributedDataParallel, rank 0 decides and every rank applies
its edits (esper.simic.distributed); rank 0 alone prints and writes DIR.
"""

from __future__ import annotations

import copy

import torch

from esper.cli.runs import (
    add_common,
    build_config,
    check_device,
    check_host_fits,
    check_out_dir,
    clear_out_dir,
    join_ranks,
    load_dataset,
    split_sizes,
)
from esper.kasmina.hosts import load_model_file
from esper.leyline import UsageError


def add_arguments(p) -> None:
    from esper.simic.policies import known_policies

    p.add_argument(
        "--policy",
        default="heuristic",
        help=f"runs/NAME/tamiyo.pt, or a built-in policy: {', '.join(known_policies())} "
        "(default heuristic; tamiyo: the pretrained one; wait: host only)",
    )
    p.add_argument("--out", required=True, help="output directory (new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (what it holds is deleted first)")
    p.add_argument("--baseline", action="store_true", help="also train the host alone, for comparison")
    p.add_argument(
        "--trust-host-code", action="store_true", help="with a trained policy and no --host, run the model file the policy's settings name"
    )
    add_common(p)


def _trained_policy(args):
    """(the trained policy in the file --policy names, the config it was trained with), or
    (None, None) for a built-in policy."""
    from esper.simic.policies import resolve_policy
    from esper.tamiyo import POLICIES

    if args.policy in POLICIES:
        return None, None
    try:
        policy, _, trained = resolve_policy(args.policy, None)
    except UsageError as e:
        raise UsageError(f"--{e}") from e
    if args.config:
        raise UsageError("--config cannot be combined with a trained policy: its settings come from the policy file")
    if args.blend_steps is not None and args.blend_steps != policy.vocab.blend_steps:
        raise UsageError(f"this policy was trained with --blend-steps {policy.vocab.blend_steps}")
    return policy, trained


def run(args) -> int:
    from esper.simic.distributed import stop

    policy, trained = _trained_policy(args)
    if trained is None and not args.host and not args.config:
        raise UsageError("--host is required (a model file, e.g. examples/host_cnn.py)")
    if trained is not None and not args.host and not args.trust_host_code:
        raise UsageError(
            f"--policy {args.policy} names the model file {trained.host}, which would run: pass "
            "--host MODEL.py, or --trust-host-code if you trust whoever made the policy file"
        )
    cfg = build_config(args, trained)
    device = check_device(cfg.device, compile=cfg.env.compile)
    out = check_out_dir(args.out, overwrite=args.overwrite)
    cfg, ranks, device = join_ranks(cfg, device)
    try:
        return _grow(args, cfg, policy, device, out, ranks)
    finally:
        stop()


def seed_outcome(summary: dict, plane) -> str:
    """What became of the seeds, for the closing line: the fossils, and every seed the
    episode ended before it finished (with its blueprint and stage), so none goes unmentioned."""
    from esper.leyline import ACTIVE_STAGES

    fossils = ", ".join(summary["fossil_blueprints"]) or "none"
    text = f"{summary['fossilized']} seed(s) fossilized ({fossils})"
    unfinished = [f"{slot_id} {slot.blueprint} {slot.stage.name}" for slot_id, slot in plane.slots.items() if slot.stage in ACTIVE_STAGES]
    if unfinished:
        text += f", {len(unfinished)} left unfinished ({', '.join(unfinished)})"
    return text


def _grow(args, cfg, policy, device, out, ranks) -> int:
    from esper.runs import metrics as metrics_io
    from esper.runs.grow_run import write_grow_run
    from esper.runs.report import loss_in_units, verdict
    from esper.simic.distributed import decided_on_main, main_first
    from esper.simic.env import GrowthEnv
    from esper.simic.vectorized import decide_with, grow_once, place_data
    from esper.tamiyo import build_policy

    say = print if ranks.main else (lambda *a, **k: None)
    if policy is None:
        policy = build_policy(args.policy, cfg.vocabulary, heuristic=cfg.heuristic, seed=cfg.seed)

    torch.manual_seed(cfg.seed)  # the host's initial weights, when its file draws them
    template, example = load_model_file(cfg.host)
    show = not args.no_progress and ranks.main
    with main_first(ranks):
        data = load_dataset(cfg, progress=show)
    example = check_host_fits(template, example, data)
    data, where = place_data(data, device)
    writer = None
    if ranks.main:
        if args.overwrite:
            clear_out_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / metrics_io.JSONL_NAME).unlink(missing_ok=True)
        writer = metrics_io.MetricsWriter(out, tensorboard=False)
    examples = "images" if data.unit == "image" else f"sequences of {data.train.x.shape[1]} {data.unit}s"
    spread = f", {ranks.world_size} processes" if ranks.spread else ""
    say(
        f"esper grow: {cfg.host} with policy {args.policy}, {cfg.env.epochs} epochs on {len(data.train)} "
        f"{data.name} {examples} (on {where}{spread}), output in {out}"
    )
    say(f"  {data.name}: {split_sizes(data)}")

    def grow(run_name: str, chooser_policy) -> tuple[GrowthEnv, dict]:
        env = GrowthEnv(
            lambda: copy.deepcopy(template),
            data,
            cfg.env,
            cfg.reward,
            blueprints=cfg.blueprints,
            blends=cfg.blends,
            device=device,
            example_input=example,
            ranks=ranks,
        )
        bar = None
        if show:
            from esper.runs.metrics import progress_bar

            bar = progress_bar(total=cfg.env.decisions, desc=f"grow ({run_name})", unit="step")

        def on_decision(decision) -> None:
            info = decision.results[0].info
            if writer is not None:
                writer.write("epoch", {"run": run_name, **info.to_dict()})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(val_acc=f"{info.val_acc:.3f}", edit=info.edit.op.name)

        try:
            summary = grow_once(env, cfg.seed, decided_on_main(decide_with(chooser_policy), ranks), data.test, on_decision)
        finally:
            if bar is not None:
                bar.close()
        if env.mm.compiled is not None:
            summary["compile"] = env.mm.compiled.summary()
        return env, summary

    env, summary = grow("grown", policy)
    summary.update(
        policy=args.policy,
        host=cfg.host,
        data=data.name,
        epochs=cfg.env.epochs,
        seed=cfg.seed,
        train_images=len(data.train),
        task=env.task.name,
        unit=data.unit,
        world_size=ranks.world_size,
    )
    if args.baseline:
        _, base = grow("baseline", build_policy("wait", cfg.vocabulary))
        summary["baseline"] = {
            k: base[k] for k in ("val_acc", "val_loss", "test_acc", "test_loss", "best_val_acc", "params", "wall_seconds", "train_flops")
        }
    if not ranks.main:
        return 0
    writer.close()

    report = write_grow_run(out, summary=summary, edits=env.plane.edits, model=env.mm, config=cfg)

    print(
        f"esper grow: val acc {summary['initial_val_acc']:.3f} -> {summary['val_acc']:.3f}, test acc "
        f"{summary['test_acc']:.3f}; {seed_outcome(summary, env.plane)}, "
        f"parameters +{summary['param_ratio']:.1%}; {summary['wall_seconds']:.0f}s"
    )
    next_token = summary["task"] == "next_token"
    if next_token:
        print(f"  test loss {summary['test_loss']:.3f} nats per {data.unit} ({loss_in_units(summary['test_loss'], data.unit)})")
    if "compile" in summary:
        c = summary["compile"]
        refused = f", CUDA graphs refused {c['cudagraph_refusals']} time(s)" if c["cudagraph_refusals"] else ""
        print(f"  torch.compile: {c['compiles']} graph(s) for {c['structures']} model structure(s){refused}")
    if "baseline" in summary:
        b = summary["baseline"]
        loss = f", test loss {b['test_loss']:.3f} ({loss_in_units(b['test_loss'], data.unit)})" if next_token else ""
        print(f"  host alone: val acc {b['val_acc']:.3f}, test acc {b['test_acc']:.3f}{loss}")
        print(f"  {verdict(summary)}")
        if b["wall_seconds"] > 0 and b["train_flops"] and summary["train_flops"]:
            # Time beyond compute: what growing costs more than the modules it added.
            print(
                f"  wall time {summary['wall_seconds'] / b['wall_seconds']:.2f}x the host alone's "
                f"for {summary['train_flops'] / b['train_flops']:.2f}x its training FLOPs"
            )
    print(f"  wrote {out / 'model'}, {out / 'edits.yaml'}, {out / metrics_io.JSONL_NAME}, {report}")
    return 0
