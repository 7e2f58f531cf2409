"""Agents that learn from the env's rewards alone (policy gradient), for ``train.rl``.

Self-play (``train.selfplay``) trains through the differentiable rasteriser; these agents
see only what an RL learner sees: observations and a reward of 1 for a won game. Both are
env policies, ``policy(observation, agent) -> action`` (greedy: the sender's mean
strokes, the receiver's best-scored candidate), for one game's observation or for a
vector env's batch of them, and add what learning needs::

    action, log_prob, entropy = policy.sample(observation, generator)

- :class:`StrokePolicy` (the sender): a Gaussian over the ``n_lines x 4`` stroke
  coordinates, mean ``tanh(MLP(features(image)))``, one learnt standard deviation per
  coordinate; the strokes sent are the sample clipped to the canvas ``[-1, 1]``.
- :class:`ChoicePolicy` (the receiver): a softmax over the candidates of
  ``<CNN(sketch), MLP(features(candidate))>``, the paper's receiver with a small CNN
  learnt from scratch for sketches.

Images and candidates are described by a **frozen** visual system
(:class:`FrozenFeatures`, by default the shipped one of the dataset): an image's features
never change, so they are kept by the image's bytes and each image of the dataset is
encoded once, which makes a game about 15x cheaper than re-encoding its candidates.

Any other object with ``policy(observation, agent)`` can take a seat as a fixed partner
(:func:`act` calls it once per game unless it says ``batched = True``), for example a
self-play run's :class:`agents.policies.AgentPolicy`; :func:`load_policy` reads either kind
of run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from agents.backbones import Backbone, default_weights, make_backbone, small_features
from agents.config import dataclass_from_mapping, option
from agents.files import CorruptFileError, load_torch
from agents.models import mlp
from agents.policies import AgentPolicy, candidate_images
from agents.runs import THREADS, THREADS_HELP
from sketchenv.env import RECEIVER, SENDER
from sketchenv.game import GAMES

FORMAT = "sketchenv-rl"
VERSION = 1
LOG_STD_RANGE = (math.log(0.01), math.log(2.0))  # the sender's exploration noise, clamped
# Keys that may change when a run is resumed (they do not change what is computed).
RESUMABLE = ("games", "time_budget", "device", "output", "log_every", "threads")


@dataclass
class RLConfig:
    """Everything that defines a policy-gradient run (``python -m train.rl --help``)."""

    game: str = option("oo-same", "game variant", "game", choices=GAMES)
    dataset: str = option("shapes", "registry name or imagefolder:PATH", "game")
    data_root: str = option("./data", "where datasets live", "game")
    download: bool = option(False, "download the dataset if missing", "game")
    image_size: int = option(32, "pixels per side", "game")
    n_distractors: int | None = option(
        None, "distractors per game", "game", default_help="99 original, classes-1 OO games"
    )
    lines: int = option(20, "strokes per sketch", "game")
    weights: str | None = option(
        None,
        "the frozen visual system of images and candidates (small backbone, width 32): a "
        "weights file or shipped name, or none",
        "agents",
        default_help="the shipped <dataset>-supervised-<size> when there is one, else none",
    )
    sender_hidden: list[int] = option([256], "sender MLP hidden sizes", "agents")
    receiver_width: int = option(16, "channels of the receiver's sketch CNN", "agents")
    embedding: int = option(64, "receiver embedding size", "agents")
    init_std: float = option(0.3, "sender's initial exploration noise (canvas units)", "agents")
    sender_from: str | None = option(
        None, "a run (train.selfplay or train.rl) whose sender plays, fixed", "agents"
    )
    receiver_from: str | None = option(
        None, "a run (train.selfplay or train.rl) whose receiver plays, fixed", "agents"
    )
    num_envs: int = option(256, "games played at once (one update per round)", "learning")
    games: int = option(300_000, "games to play in all", "learning")
    lr_sender: float = option(3e-4, "Adam learning rate of the sender", "learning")
    lr_receiver: float = option(1e-3, "Adam learning rate of the receiver", "learning")
    entropy_sender: float = option(0.0, "entropy bonus of the sender", "learning")
    entropy_receiver: float = option(0.05, "entropy bonus of the receiver", "learning")
    seed: int = option(0, "weights, games and every sampled action", "run")
    device: str = option("auto", "auto | cpu | cuda | cuda:N", "run")
    threads: int = option(THREADS, THREADS_HELP, "run")
    output: str | None = option(None, "run directory", "run", default_help="runs/rl-<game>-<time>")
    val_games: int = option(2048, "validation games per pass (greedy actions)", "run")
    eval_every: int = option(50_000, "games between validation passes", "run")
    time_budget: float | None = option(None, "stop after this many seconds (this process)", "run")
    log_every: int = option(10, "rounds between TensorBoard points", "run")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rl_config(values: Mapping[str, Any]) -> RLConfig:
    """A checked config from a mapping (keys may use ``-`` or ``_``)."""
    c = dataclass_from_mapping(RLConfig, dict(values))
    checks = [
        (c.game in GAMES, f"game must be one of {GAMES}, got {c.game!r}"),
        (c.image_size >= 8, "image_size must be >= 8"),
        (c.lines >= 1, "lines must be >= 1"),
        (all(h >= 1 for h in c.sender_hidden), "sender_hidden sizes must be >= 1"),
        (c.receiver_width >= 1 and c.embedding >= 1, "receiver_width and embedding must be >= 1"),
        (0 < c.init_std < math.inf, "init_std must be a finite number > 0"),
        (c.num_envs >= 1, "num_envs must be >= 1"),
        (c.games >= 1, "games must be >= 1"),
        (0 < c.lr_sender < math.inf and 0 < c.lr_receiver < math.inf, "learning rates must be > 0"),
        (c.entropy_sender >= 0 and c.entropy_receiver >= 0, "entropy bonuses must be >= 0"),
        (0 <= c.seed < 2**62, "seed must be >= 0 (and below 2**62)"),
        (c.threads >= 0, "threads must be >= 0 (0 = torch's default)"),
        (c.val_games >= 1 and c.eval_every >= 1, "val_games and eval_every must be >= 1"),
        (c.time_budget is None or c.time_budget > 0, "time_budget must be > 0 (or unset)"),
        (c.log_every >= 1, "log_every must be >= 1"),
        (
            c.sender_from is None or c.receiver_from is None,
            "sender_from and receiver_from together leave nothing to learn: drop one",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return c


class FrozenFeatures:
    """A frozen backbone's flattened features of uint8 ``[..., H, W, 3]`` images, kept by
    image bytes (at most ``max_images``; the store is emptied when full).

    New images are encoded in chunks of exactly ``chunk`` (padded), so an image's features
    do not depend on which others were new with it (CPU convolutions differ in the last
    bit between batch sizes): a resumed run computes what an uninterrupted one did."""

    def __init__(self, backbone: Backbone, max_images: int = 200_000, chunk: int = 64) -> None:
        self.backbone = backbone.eval().requires_grad_(False)
        self.device = next(backbone.parameters()).device
        self.max_images, self.chunk = max_images, chunk
        self._store: dict[bytes, Tensor] = {}

    def __call__(self, images: np.ndarray) -> Tensor:
        flat = np.ascontiguousarray(images).reshape(-1, *images.shape[-3:])
        keys = [image.tobytes() for image in flat]
        where = {key: i for i, key in enumerate(keys)}  # one row of flat per distinct image
        if len(self._store) + sum(key not in self._store for key in where) > self.max_images:
            self._store.clear()
        new = [i for key, i in where.items() if key not in self._store]
        for start in range(0, len(new), self.chunk):
            rows = new[start : start + self.chunk]
            batch = torch.zeros(self.chunk, *flat.shape[1:], dtype=torch.uint8)
            batch[: len(rows)] = torch.from_numpy(flat[rows])
            with torch.no_grad():
                features = self.backbone(to_images(batch, self.device)).flatten(1).cpu()
            # rows copied out, so a chunk that was mostly padding is not kept alive by one
            self._store.update(
                (keys[i], row.clone()) for i, row in zip(rows, features, strict=False)
            )
        out = torch.stack([self._store[key] for key in keys]).to(self.device)
        return out.view(*images.shape[:-3], -1)


def to_images(pixels: np.ndarray | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """uint8 ``[..., H, W, 3]`` (the env's pictures) -> float ``[..., 3, H, W]`` in [0, 1]."""
    pixels = torch.as_tensor(np.asarray(pixels)).to(device)
    return pixels.movedim(-1, -3).float() / 255


class StrokePolicy(nn.Module):
    """The sender: strokes ``~ N(tanh(MLP(features(image))), std)``, clipped to [-1, 1]."""

    batched = True

    def __init__(
        self,
        features: FrozenFeatures,
        feature_size: int,
        n_lines: int = 20,
        hidden: tuple[int, ...] = (256,),
        init_std: float = 0.3,
    ) -> None:
        super().__init__()
        self.features, self.n_lines = features, n_lines
        self.head = mlp([feature_size, *hidden, n_lines * 4])
        self.log_std = nn.Parameter(torch.full((n_lines * 4,), math.log(init_std)))

    def mean(self, images: np.ndarray) -> Tensor:
        """``[N, H, W, 3]`` uint8 images -> mean strokes ``[N, n_lines * 4]``."""
        return torch.tanh(self.head(self.features(images)))

    def std(self) -> Tensor:
        return self.log_std.clamp(*LOG_STD_RANGE).exp()

    def sample(
        self, observation: Mapping[str, Any], generator: torch.Generator
    ) -> tuple[np.ndarray, Tensor, Tensor]:
        """Strokes ``[N, n_lines, 4]`` for a batch of sender observations, their log-probability
        and the policy's entropy (per game)."""
        mean, std = self.mean(observation["image"]), self.std()
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        action = (mean + std * noise).detach()
        normal = torch.distributions.Normal(mean, std)
        log_prob = normal.log_prob(action).sum(-1)
        entropy = normal.entropy().sum(-1)
        strokes = action.clamp(-1, 1).view(-1, self.n_lines, 4)
        return strokes.cpu().numpy(), log_prob, entropy

    def forward(self, observation: Mapping[str, Any], agent: str = SENDER) -> np.ndarray:
        """The mean strokes (``[n_lines, 4]``, or ``[N, n_lines, 4]`` for a batch)."""
        image = np.asarray(observation["image"])
        with torch.no_grad():
            strokes = self.mean(image.reshape(-1, *image.shape[-3:]))
        return strokes.view(*image.shape[:-3], self.n_lines, 4).cpu().numpy()


class ChoicePolicy(nn.Module):
    """The receiver: ``softmax_j <CNN(sketch), MLP(features(candidate_j))>``."""

    batched = True

    def __init__(
        self,
        features: FrozenFeatures,
        feature_size: int,
        image_size: tuple[int, int],
        width: int = 16,
        embedding: int = 64,
        hidden: tuple[int, ...] = (256,),
    ) -> None:
        super().__init__()
        self.features = features
        self.sketch_net = small_features(width)
        with torch.no_grad():
            maps = self.sketch_net(torch.zeros(1, 3, *image_size))
        self.sketch_head = nn.Linear(maps.numel(), embedding)
        self.candidate_head = mlp([feature_size, *hidden, embedding])

    def logits(self, observation: Mapping[str, Any]) -> Tensor:
        """``[N, C]`` scores of each batched receiver observation's candidates."""
        candidates = np.stack(candidate_images(observation), -4)  # [N, C, H, W, 3]
        sketches = to_images(observation["sketch"], self.features.device)
        sketch = self.sketch_head(self.sketch_net(sketches).flatten(1))
        candidate = self.candidate_head(self.features(candidates))
        return (candidate @ sketch.unsqueeze(-1)).squeeze(-1)

    def sample(
        self, observation: Mapping[str, Any], generator: torch.Generator
    ) -> tuple[np.ndarray, Tensor, Tensor]:
        """Choices ``[N]`` for a batch of receiver observations, their log-probability and
        the policy's entropy."""
        log_probs = torch.log_softmax(self.logits(observation), -1)
        choice = torch.multinomial(log_probs.detach().exp().cpu(), 1, generator=generator)
        choice = choice.to(log_probs.device)
        log_prob = log_probs.gather(-1, choice).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return choice.squeeze(-1).cpu().numpy(), log_prob, entropy

    def forward(self, observation: Mapping[str, Any], agent: str = RECEIVER) -> np.ndarray | int:
        """The best-scored candidate (an int, or ``[N]`` choices for a batch)."""
        single = np.asarray(observation["sketch"]).ndim == 3
        if single:
            observation = {k: np.asarray(v)[None] for k, v in observation.items()}
        with torch.no_grad():
            choices = self.logits(observation).argmax(-1).cpu().numpy()
        return int(choices[0]) if single else choices


def act(policy: Any, observation: Mapping[str, Any], agent: str) -> np.ndarray:
    """Any ``policy(observation, agent)`` on a vector env's batched ``observation``: one
    call when the policy says ``batched = True``, otherwise one call per game."""
    if getattr(policy, "batched", False):
        return np.asarray(policy(observation, agent))
    n = len(observation["phase"])
    return np.stack(
        [np.asarray(policy({k: v[i] for k, v in observation.items()}, agent)) for i in range(n)]
    )


def learns(policy: Any) -> bool:
    """Whether ``policy`` is trained here: a module with ``sample`` and trainable
    parameters. Anything else is a fixed partner."""
    return (
        isinstance(policy, nn.Module)
        and callable(getattr(policy, "sample", None))
        and any(p.requires_grad for p in policy.parameters())
    )


class RLAgents(nn.Module):
    """A sender and a receiver as one env policy: ``agents(observation, agent)``."""

    batched = True

    def __init__(self, sender: StrokePolicy, receiver: ChoicePolicy) -> None:
        super().__init__()
        self.sender, self.receiver = sender, receiver

    def forward(self, observation: Mapping[str, Any], agent: str) -> np.ndarray | int:
        role = str(agent).split("_")[0]
        if role not in ("sender", "receiver"):
            raise ValueError(f"RLAgents act for sender_* and receiver_* agents, not {agent!r}")
        return getattr(self, role)(observation, agent)


def make_agents(
    config: RLConfig, device: torch.device | str = "cpu", load: bool = True
) -> RLAgents:
    """The sender and receiver of ``config`` on ``device``, sharing one frozen visual
    system (``load=False`` leaves its weights random, for a checkpoint to fill)."""
    size = (config.image_size, config.image_size)
    weights = config.weights or default_weights("small", config.dataset, size)
    backbone = make_backbone("small", weights, image_size=size, load=load).to(device)
    features = FrozenFeatures(backbone)
    feature_size = int(np.prod(backbone.output_shape(size)))
    sender = StrokePolicy(
        features, feature_size, config.lines, tuple(config.sender_hidden), config.init_std
    )
    receiver = ChoicePolicy(features, feature_size, size, config.receiver_width, config.embedding)
    agents = RLAgents(sender, receiver).to(device)
    agents.register_module("backbone", backbone)  # saved once with the agents' state
    return agents


class NotAnRLRun(ValueError):
    """The file is a checkpoint, but not one of ``train.rl``."""


def read_rl_checkpoint(path: str | Path) -> dict[str, Any]:
    """An RL run's ``last.pt`` (a file or its run folder), checked."""
    file = Path(path) / "last.pt" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {file} (give a run folder or its last.pt)")
    try:
        payload = load_torch(file, "checkpoint")
    except CorruptFileError as err:
        raise ValueError(str(err)) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise NotAnRLRun(f"{file} is not a checkpoint of python -m train.rl")
    if payload.get("version") != VERSION:
        raise ValueError(f"{file} has version {payload.get('version')}; this reads {VERSION}")
    payload["path"] = str(file)
    return payload


def load_policy(path: str | Path, agent: str, config: RLConfig, device: torch.device | str = "cpu"):
    """``agent``'s policy from the run at ``path`` (``train.rl``, else ``train.selfplay``),
    fixed: it plays but does not learn. An RL run must have ``config``'s image size and
    stroke count; a self-play policy is checked against the env by ``check_env``."""
    try:
        payload = read_rl_checkpoint(path)
    except NotAnRLRun:
        return AgentPolicy.from_checkpoint(path, device=device, strict=False)
    saved = rl_config(payload["config"])
    for key in ("image_size", "lines"):
        if getattr(saved, key) != getattr(config, key):
            raise ValueError(
                f"{payload['path']} was trained with {key} {getattr(saved, key)}, this run "
                f"uses {getattr(config, key)}: use the same --{key.replace('_', '-')}"
            )
    agents = make_agents(saved, device, load=False)
    agents.load_state_dict(payload["agents"])
    agents.requires_grad_(False)
    return agents.sender if agent == SENDER else agents.receiver
