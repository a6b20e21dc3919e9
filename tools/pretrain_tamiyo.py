"""Pretrain the Tamiyo that ships with esper, across the host zoo, on cheap episodes.

    python tools/pretrain_tamiyo.py              # CIFAR-10 proxy episodes; writes esper/tamiyo/pretrained/
    python tools/pretrain_tamiyo.py --smoke      # the synthetic task in a minute, into --out (tested)
    python tools/pretrain_tamiyo.py --plot docs/pretrain.png   # the curves of the run in --out

The proxy episode: 3,000 CIFAR-10 training images average-pooled to 16x16, 500 for
validation, 6 epochs of two decisions each, on every host of the zoo's TRAINING_HOSTS in
turn (esper.simic.pretrain says what is learned and how). Writes OUT/tamiyo.safetensors
(the weights), OUT/tamiyo.yaml (the manifest: the weights' sha256, the policy's config,
every setting of the run and what it did) and OUT/pretrain.jsonl (one record per update).
OUT/pretrain.ckpt holds the run after the clone and after every update until the policy
is written: the same command, run again after a crash, goes on from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evidence_regime import CIFAR_ARCHIVE, _subset  # noqa: E402

from esper.data.splits import load_data  # noqa: E402
from esper.runs import config as config_io  # noqa: E402
from esper.simic.env import EnvConfig, GrowthEnv  # noqa: E402
from esper.simic.host_zoo import HOSTS  # noqa: E402
from esper.simic.policies import PRETRAINED  # noqa: E402
from esper.simic.pretrain import PretrainConfig, Pretrainer, downsampled, proxy_env  # noqa: E402
from esper.simic.train_config import TrainConfig  # noqa: E402
from esper.simic.train_files import save_pretrained  # noqa: E402
from esper.simic.vectorized import decide_with, grow_once  # noqa: E402
from esper.tamiyo import ImitationConfig  # noqa: E402


def proxy_data(spec: str, size: int, train: int, val: int, test: int | None = None):
    """The proxy's splits: fixed random subsets (test: as many as val unless given), images
    pooled to size x size."""
    data = load_data(spec, progress=False, limit=train + val if spec == "synthetic" else None)
    test_split = _subset(data.test, test or val, 13)
    data = dataclasses.replace(data, train=_subset(data.train, train, 11), val=_subset(data.val, val, 12), test=test_split)
    return downsampled(data, size)


def proxy_episode(data, host: str, policy, vocab, seed: int, env: EnvConfig | None = None, test=None) -> dict:
    """One episode of `policy`, deciding in `vocab`, on the zoo's `host` (default: the
    proxy's settings and pretraining's reward without the twin): grow_once's summary, with
    the accuracy on `test` when given."""
    growth = GrowthEnv(
        lambda: HOSTS[host](data.num_classes),
        data,
        env or proxy_env(),
        dataclasses.replace(PretrainConfig().reward, relative_to_twin=False),
        blueprints=list(vocab.blueprints),
        blends=list(vocab.blends),
        example_input=data.train.x[:2],
    )
    return grow_once(growth, seed, decide_with(policy), test)


def smoke_config() -> PretrainConfig:
    cfg = PretrainConfig(
        hosts=["plain-w8-b4", "residual-w8-b3"], clone_episodes=2, dagger_rounds=1, dagger_episodes=2, updates=1, groups=2, group_size=2
    )
    cfg.env = dataclasses.replace(cfg.env, epochs=3, batch_size=64, contribution_samples=64)
    cfg.imitation = ImitationConfig(max_epochs=20)
    return cfg


def plot(records: list[dict], path: Path) -> None:
    """Return against the twin, teacher agreement and fossils per episode, update by update."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["episodes"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(
        axes,
        ("return", "teacher_agreement", "fossils"),
        ("return against the twin", "actions equal to the teacher's", "fossils per episode"),
    ):
        ax.plot(x, [r[key] for r in records], marker="o")
        ax.set_title(title)
        ax.set_xlabel("PPO episodes")
    axes[0].axhline(0, color="grey", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(PRETRAINED.parent), help="where tamiyo.safetensors, tamiyo.yaml and pretrain.jsonl go")
    p.add_argument("--data", default=str(CIFAR_ARCHIVE), help="the CIFAR-10 ImageFolder archive")
    p.add_argument("--updates", type=int, help="PPO updates (default: the config's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="a tiny run on the synthetic task")
    p.add_argument("--plot", metavar="PNG", help="draw the curves of the run in --out, and train nothing")
    args = p.parse_args(argv)
    if args.plot:
        plot([json.loads(line) for line in (Path(args.out) / "pretrain.jsonl").read_text().splitlines()], Path(args.plot))
        return 0
    torch.set_num_threads(args.threads)
    cfg = smoke_config() if args.smoke else PretrainConfig()
    if args.updates is not None:
        cfg.updates = args.updates
    spec = "synthetic" if args.smoke else args.data
    if spec != "synthetic" and not Path(spec).exists():
        print(f"pretrain: no dataset at {spec}; pass --data PATH to the CIFAR-10 ImageFolder archive", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = proxy_data(spec, 16, 400 if args.smoke else 3000, 100 if args.smoke else 500)
    start = time.perf_counter()
    trainer = Pretrainer(cfg, data)
    log_path, checkpoint = out / "pretrain.jsonl", out / "pretrain.ckpt"

    def record(_: dict) -> None:  # every update so far, those of a run this one resumed included
        log_path.write_text("".join(json.dumps(r) + "\n" for r in trainer.history if "update" in r))

    policy = trainer.run(log=lambda text: print(text, flush=True), on_update=record, checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    episodes = cfg.clone_episodes + cfg.dagger_rounds * cfg.dagger_episodes + cfg.updates * cfg.episodes_per_update
    # What `esper grow --policy tamiyo` starts from: a grow run's defaults in the policy's
    # vocabulary, blend steps and budget (no twin: that is for training). How the policy was
    # trained is under the manifest's `training`.
    described = TrainConfig(
        episodes=episodes,
        hidden=cfg.hidden,
        blueprints=list(trainer.vocab.blueprints),
        blends=list(trainer.vocab.blends),
        env=EnvConfig(blend_steps=cfg.env.blend_steps),
        reward=dataclasses.replace(cfg.reward, relative_to_twin=False),
        ppo=cfg.ppo,
        imitation=cfg.imitation,
        heuristic=cfg.teacher,
    )
    training = {
        "episodes": episodes,
        "minutes": round(seconds / 60, 1),
        "data": Path(spec).name,
        "clone": trainer.history[0]["clone"],
        "pretrain": config_io.to_dict(cfg),
    }
    save_pretrained(policy, out / "tamiyo.yaml", described, training)
    checkpoint.unlink()  # the policy is written: a rerun starts afresh
    print(f"pretrain: {episodes} episodes on {len(cfg.hosts)} hosts in {seconds / 60:.1f} min; wrote {out / 'tamiyo.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
