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
import json
import time
from pathlib import Path

import torch
import yaml

from esper.leyline import UsageError
from esper.cli.runs import add_common, build_config, check_device, check_host_fits, check_out_dir, join_ranks, load_dataset
from esper.kasmina.hosts import load_model_file

POLICY_KINDS = ("heuristic", "random", "wait")


def add_arguments(p) -> None:
    p.add_argument("--policy", default="heuristic", help="runs/NAME/tamiyo.pt, heuristic (default), random, or wait (host only)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--baseline", action="store_true", help="also train the host alone, for comparison")
    p.add_argument("--trust-host-code", action="store_true",
                   help="with a trained policy and no --host, run the model file the policy's settings name")
    add_common(p)


def _policy_and_config(args):
    """(policy or None for the built-ins, base config or None)."""
    if args.policy in POLICY_KINDS:
        return None, None
    path = Path(args.policy)
    if not path.exists():
        raise UsageError(f"--policy {args.policy}: no such file; give runs/NAME/tamiyo.pt or one of {', '.join(POLICY_KINDS)}")
    from esper.simic.train_files import load_policy

    try:
        policy, trained = load_policy(path)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise UsageError(f"--policy {args.policy}: {e}") from e
    if args.config:
        raise UsageError("--config cannot be combined with a trained policy: its settings come from the policy file")
    if args.blend_steps is not None and args.blend_steps != policy.vocab.blend_steps:
        raise UsageError(f"this policy was trained with --blend-steps {policy.vocab.blend_steps}")
    return policy, trained


def run(args) -> int:
    from esper.simic.distributed import stop

    policy, trained = _policy_and_config(args)
    if trained is None and not args.host and not args.config:
        raise UsageError("--host is required (a model file, e.g. examples/host_cnn.py)")
    if trained is not None and not args.host and not args.trust_host_code:
        raise UsageError(f"--policy {args.policy} names the model file {trained.host}, which would run: pass "
                         "--host MODEL.py, or --trust-host-code if you trust whoever made the policy file")
    cfg = build_config(args, trained)
    device = check_device(cfg.device)
    out = check_out_dir(args.out)
    cfg, ranks, device = join_ranks(cfg, device)
    try:
        return _grow(args, cfg, policy, device, out, ranks)
    finally:
        stop()


def _grow(args, cfg, policy, device, out, ranks) -> int:
    import esper
    from esper.runs import config as config_io
    from esper.runs import metrics as metrics_io
    from esper.runs.report import loss_in_units, make_report
    from esper.simic.baselines import WaitPolicy
    from esper.simic.distributed import decided_on_main, main_first
    from esper.simic.env import GrowthEnv
    from esper.simic.vectorized import VectorEnv, decide_with, place_data, run_episodes
    from esper.tamiyo import HeuristicPolicy, RandomPolicy

    say = print if ranks.main else (lambda *a, **k: None)
    if policy is None:
        if args.policy == "heuristic":
            policy = HeuristicPolicy(cfg.vocabulary, cfg.heuristic)
        elif args.policy == "random":
            policy = RandomPolicy(cfg.vocabulary, seed=cfg.seed)
        else:
            policy = WaitPolicy()

    torch.manual_seed(cfg.seed)  # the host's initial weights, when its file draws them
    template, example = load_model_file(cfg.host)
    show = not args.no_progress and ranks.main
    with main_first(ranks):
        data = load_dataset(cfg, progress=show)
    example = check_host_fits(template, example, data)
    data, where = place_data(data, device)
    writer = None
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / metrics_io.JSONL_NAME).unlink(missing_ok=True)
        writer = metrics_io.MetricsWriter(out, tensorboard=False)
    examples = "images" if data.unit == "image" else f"sequences of {data.train.x.shape[1]} {data.unit}s"
    spread = f", {ranks.world_size} processes" if ranks.spread else ""
    say(f"esper grow: {cfg.host} with policy {args.policy}, {cfg.env.epochs} epochs on {len(data.train)} "
        f"{data.name} {examples} (on {where}{spread}), output in {out}")

    def grow(run_name: str, chooser_policy) -> tuple[GrowthEnv, dict]:
        env = GrowthEnv(lambda: copy.deepcopy(template), data, cfg.env, cfg.reward, blueprints=cfg.blueprints,
                        blends=cfg.blends, device=device, example_input=example, ranks=ranks)
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=cfg.env.decisions, desc=f"grow ({run_name})", unit="step", dynamic_ncols=True)

        def on_decision(decision) -> None:
            info = decision.results[0].info
            if writer is not None:
                writer.write("epoch", {"run": run_name, **info.to_dict()})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(val_acc=f"{info.val_acc:.3f}", edit=info.edit.op.name)

        start = time.perf_counter()
        try:
            rollout = run_episodes(VectorEnv([env]), [cfg.seed], decided_on_main(decide_with(chooser_policy), ranks), on_decision)
        finally:
            if bar is not None:
                bar.close()
        summary = rollout.summaries[0].to_dict()
        summary["test_loss"], summary["test_acc"] = env.evaluate(data.test)
        summary["wall_seconds"] = time.perf_counter() - start
        summary["throughput"] = rollout.throughput
        return env, summary

    env, summary = grow("grown", policy)
    summary.update(policy=args.policy, host=cfg.host, data=data.name, epochs=cfg.env.epochs, seed=cfg.seed,
                   train_images=len(data.train), task=env.task.name, unit=data.unit, world_size=ranks.world_size)
    if args.baseline:
        _, base = grow("baseline", WaitPolicy())
        summary["baseline"] = {k: base[k] for k in ("val_acc", "val_loss", "test_acc", "test_loss", "best_val_acc", "params",
                                                    "wall_seconds")}
    if not ranks.main:
        return 0
    writer.close()

    esper.save(env.mm, out / "model")
    (out / "edits.yaml").write_text(yaml.safe_dump([e.to_dict() for e in env.plane.edits], sort_keys=False))
    config_io.save_yaml(cfg, out / "config.yaml")
    (out / "summary.json").write_text(json.dumps(metrics_io.clean(summary), indent=2))
    report = make_report(out)

    fossils = ", ".join(summary["fossil_blueprints"]) or "none"
    print(f"esper grow: val acc {summary['initial_val_acc']:.3f} -> {summary['val_acc']:.3f}, test acc "
          f"{summary['test_acc']:.3f}; {summary['fossilized']} seed(s) fossilized ({fossils}), "
          f"parameters +{summary['param_ratio']:.1%}; {summary['wall_seconds']:.0f}s")
    next_token = summary["task"] == "next_token"
    if next_token:
        print(f"  test loss {summary['test_loss']:.3f} nats per {data.unit} ({loss_in_units(summary['test_loss'], data.unit)})")
    if "baseline" in summary:
        b = summary["baseline"]
        loss = f", test loss {b['test_loss']:.3f} ({loss_in_units(b['test_loss'], data.unit)})" if next_token else ""
        print(f"  host alone: val acc {b['val_acc']:.3f}, test acc {b['test_acc']:.3f}{loss}")
    print(f"  wrote {out / 'model'}, {out / 'edits.yaml'}, {out / metrics_io.JSONL_NAME}, {report}")
    return 0
