"""TrainConfig: every setting of an `esper train` run, and the seeds of its episodes."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

from esper.kasmina.blueprints import registered_names
from esper.leyline import MAX_BLENDS, MAX_BLUEPRINTS, Vocabulary
from esper.runs import config as config_io
from esper.simic.host_training import EnvConfig
from esper.simic.rewards import RewardConfig
from esper.simic.vectorized import RUNNERS
from esper.tamiyo import HeuristicConfig, ImitationConfig, PPOConfig


@dataclass
class TrainConfig:
    """Every setting of a training run; saved resolved as config.yaml in the run directory."""

    host: str = "examples/host_cnn.py"  # a model file (build_model(), `model`, or one nn.Module class)
    data: str = "synthetic"  # 'synthetic', 'cifar10', an ImageFolder directory / archive, 'text:PATH', 'seq-synthetic'
    data_root: str = "~/.cache/esper"
    download: bool = False
    limit: int | None = None  # training images before the validation share (None: the whole set)
    val_fraction: float = 0.1
    context: int = 64  # tokens per sequence, for sequence data
    episodes: int = 16  # PPO episodes in all, run K at a time
    envs: int = 4  # K environments in lockstep
    runner: str = "auto"  # how VectorEnv trains the K hosts: sequential, batched, or auto (batched on CUDA)
    seed: int = 0
    device: str = "cpu"
    world_size: int = 1  # processes of the run (torchrun's WORLD_SIZE): recorded, not chosen here
    dist_timeout: float = 600.0  # seconds a rank waits for the others before the run ends with an error
    warm_start: int = 0  # heuristic episodes behaviour-cloned before PPO
    value_warm_epochs: int = 100  # then fit the critic to those episodes' returns (value head only)
    checkpoint_every: int = 1  # episodes between checkpoints (at round ends)
    hidden: int = 128  # Tamiyo's width
    blueprints: list[str] = field(default_factory=list)  # head vocabulary; empty: every registered one
    blends: list[str] = field(default_factory=list)
    env: EnvConfig = field(default_factory=EnvConfig)
    # Small rounds (K x T transitions): small minibatches and more epochs, so the critic gets
    # enough gradient steps per update; target_kl still stops the policy from moving far.
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(minibatch_size=16, update_epochs=8))
    reward: RewardConfig = field(default_factory=RewardConfig)
    imitation: ImitationConfig = field(default_factory=ImitationConfig)
    heuristic: HeuristicConfig = field(default_factory=HeuristicConfig)

    def __post_init__(self):
        if self.episodes < 0 or self.envs < 1 or self.warm_start < 0 or self.checkpoint_every < 1 or self.value_warm_epochs < 0:
            raise ValueError("episodes and warm_start must be >= 0; envs and checkpoint_every >= 1")
        if self.runner not in RUNNERS:
            raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {self.runner!r}")

    @property
    def vocabulary(self) -> Vocabulary:
        """What the policy's head indices name (after `resolved`, every registered name if none given)."""
        return Vocabulary(self.blueprints, self.blends, self.env.blend_steps)

    def resolved(self) -> "TrainConfig":
        """Fill the vocabulary in and tie the reward's shaping discount to PPO's gamma."""
        blueprints, blends = registered_names(self.blueprints, self.blends)
        if len(blueprints) > MAX_BLUEPRINTS or len(blends) > MAX_BLENDS:
            raise ValueError(f"at most {MAX_BLUEPRINTS} blueprints and {MAX_BLENDS} blends")
        reward = dataclasses.replace(self.reward, gamma=self.ppo.gamma)
        return dataclasses.replace(self, blueprints=blueprints, blends=blends, reward=reward)


def load_config(path) -> TrainConfig:
    return config_io.load_yaml(TrainConfig, path)


def episode_seed(run_seed: int, phase: str, index: int) -> int:
    """The seed of one episode: a function of the run seed, phase and index only, so a
    resumed run replays exactly the episodes an uninterrupted one would have."""
    digest = hashlib.sha256(f"{run_seed}/{phase}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
