"""`esper train`: train Tamiyo with PPO on K hosts growing in lockstep.

    esper train --host examples/host_cnn.py --data synthetic --episodes 16 --envs 4 --out runs/NAME
    esper train --out runs/NAME --resume --episodes 32      # continue a killed or finished run

The run directory gets config.yaml (every setting, resolved: pass it back with --config
to repeat the run), metrics.jsonl, TensorBoard events under tb/, checkpoint.pt (agent,
optimizer, RNG states, counters, metric history) and, at the end, tamiyo.pt, the
policy `esper grow --policy` takes.

Under torchrun (`torchrun --nproc_per_node N -m esper train ...`) every rank runs its own K
environments; the rollouts are gathered to rank 0, which updates Tamiyo and broadcasts her
weights, and alone writes the run directory.
"""

from __future__ import annotations

import os
from pathlib import Path

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
    p.add_argument("--out", required=True, help="run directory, e.g. runs/NAME")
    p.add_argument("--episodes", type=int, help="PPO episodes in all (default 16)")
    p.add_argument("--envs", type=int, help="environments in lockstep, K (default 4)")
    p.add_argument(
        "--runner",
        choices=["sequential", "batched", "auto"],
        help="train the K hosts one by one, or together as one vmapped model (default auto: batched on CUDA)",
    )
    p.add_argument("--warm-start", type=int, help="heuristic episodes to behaviour-clone before PPO (default 0)")
    p.add_argument("--ppo-lr", type=float, help="Tamiyo's learning rate (default 3e-4)")
    p.add_argument("--checkpoint-every", type=int, help="episodes between checkpoints (default 1: every round)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (what it holds is deleted first)")
    add_common(p)


def run(args) -> int:
    from esper.simic.distributed import stop

    try:
        return _train(args)
    finally:
        stop()


def _train(args) -> int:
    from esper.runs.files import CHECKPOINT, CONFIG, POLICY
    from esper.simic.distributed import main_first
    from esper.simic.training import Trainer, load_config
    from esper.simic.vectorized import place_data

    main = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank: the job is joined once the config is known
    # Before anything is loaded or written: a new or empty directory, a run to --resume, or one to --overwrite.
    out = check_out_dir(args.out, overwrite=args.overwrite, resume=args.resume) if main else Path(args.out)
    if args.resume and (out / CHECKPOINT).exists():
        if args.config:
            raise UsageError("--resume continues with the run's own config.yaml; drop --config")
        try:
            base = load_config(out / CONFIG)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"cannot resume {out}: {e}") from e
        cfg = build_config(args, base)
    else:
        cfg = build_config(args)
    if not args.resume and not args.host and not args.config:
        raise UsageError("--host is required (a model file, e.g. examples/host_cnn.py)")
    device = check_device(cfg.device, compile=cfg.env.compile)
    if not Path(cfg.host).is_file():
        raise UsageError(f"no such model file: {cfg.host}")
    cfg, ranks, device = join_ranks(cfg, device)
    say = print if ranks.main else (lambda *a, **k: None)

    template, example = load_model_file(cfg.host)
    with main_first(ranks):
        data = load_dataset(cfg, progress=not args.no_progress and ranks.main)
    example = check_host_fits(template, example, data)
    data, where = place_data(data, device)
    if args.overwrite and ranks.main:
        clear_out_dir(out)
    try:
        trainer = Trainer(cfg, out, template, data, example, resume=args.resume, progress=not args.no_progress, ranks=ranks)
    except ValueError as e:  # a resume whose settings differ, a host that does not fit the data
        raise UsageError(str(e)) from e
    spread = f" on each of {ranks.world_size} processes" if ranks.spread else ""
    say(
        f"esper train: {cfg.episodes} episodes on {cfg.envs} environments{spread} x {cfg.env.epochs} epochs, "
        f"{len(data.train)} training {'images' if data.unit == 'image' else 'sequences'} ({data.name}, on {where}), "
        f"run directory {out}"
    )
    say(f"  {data.name}: {split_sizes(data)}")
    result = trainer.run()
    if not ranks.main:
        return 0
    last = result["history"][-1] if result["history"] else {}
    print(f"esper train: {result['episodes']} episodes, {result['updates']} PPO updates; policy written to {out / POLICY}")
    if last:
        print(
            f"  last update: explained variance {last['explained_variance']:.3f}, "
            + ", ".join(f"{k.split('/')[1]} entropy {v:.2f}" for k, v in last.items() if k.startswith("entropy_norm/"))
        )
    print(f"  report: esper report {out}")
    return 0
