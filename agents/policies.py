"""Trained agents as PettingZoo policies: ``policy(observation, agent) -> action``.

One :class:`AgentPolicy` acts for ``sender_0`` (image -> strokes) and for ``receiver_0``
(sketch and candidates -> index), so it can play both seats of ``sketchenv.parallel_env``
or just one of them next to a human or any other policy::

    policy = AgentPolicy.from_checkpoint("runs/my-run")          # best.pt, else last.pt
    env = sketchenv.parallel_env(**policy.env_options(split="test"))
    policy.check_env(env)                      # image size, strokes, candidates, polarity
    observations, infos = env.reset(seed=0)
    while env.agents:
        actions = {agent: policy(observations[agent], agent) for agent in env.agents}
        observations, rewards, terminations, truncations, infos = env.step(actions)

Both agents act at every step of the env but only one action counts; for the idle seat
the policy returns a cheap valid placeholder (blank strokes, candidate 0) without running
a model. Observations are converted exactly as the game core builds its batches (uint8
``[H, W, 3]`` -> float ``[3, H, W]`` in [0, 1]), so a policy makes the choices the
batched trainer would make on the same 8-bit pictures.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from agents.checkpoint import game_settings, load_run
from agents.config import SelfPlayConfig
from agents.trainer import ReceiverFn, SenderFn, select_device
from sketchenv.game import SketchGame
from sketchenv.strokes import StrokeFormat


class AgentPolicy:
    """A sender and/or a receiver (plug-in interface of ``docs/architecture.md``) as an
    env policy.

    Args:
        sender: ``sender(images [N, 3, H, W]) -> strokes [N, n_lines, size]`` (the game's
            stroke format; lines: size 4), or None.
        receiver: ``receiver(sketches [B, G, 3, H, W], candidates [B, C, 3, H, W]) ->
            scores [B, G, C]``, or None.
        game: the game the agents were trained on, as a :class:`SketchGame` or its
            ``agents.checkpoint.game_settings`` dict; observations and envs are checked
            against it. Without it, the image size and stroke count are read from the
            built-in modules when possible.
        strict: also require the env's number of candidates to be the trained one. The
            built-in receiver scores each candidate on its own and so can play with any
            number; ``strict=False`` allows that (e.g. 10 candidates for people).
        device: where the models run (default: where their parameters are, else CPU).
    """

    def __init__(
        self,
        sender: SenderFn | None = None,
        receiver: ReceiverFn | None = None,
        *,
        game: SketchGame | Mapping[str, Any] | None = None,
        strict: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        if sender is None and receiver is None:
            raise ValueError("AgentPolicy needs a sender, a receiver or both")
        for name, agent in (("sender", sender), ("receiver", receiver)):
            if agent is not None and not callable(agent):
                raise TypeError(f"{name} must be callable, got {type(agent).__name__}")
        self.sender = sender
        self.receiver = receiver
        self.strict = strict
        self.settings: dict[str, Any] = (
            game_settings(game) if isinstance(game, SketchGame) else dict(game or {})
        )
        self.config: SelfPlayConfig | None = None  # set by from_checkpoint
        self.path: str | None = None
        self.device = self._pick_device(device)
        for module in self._modules():
            module.to(self.device)
        self.image_size = self._expected_image_size()
        self.n_lines = self.settings.get("n_lines", getattr(sender, "n_lines", None))
        self.n_candidates = self.settings.get("n_candidates")
        trained_format = self.settings.get("stroke_format", getattr(sender, "stroke_format", None))
        self.stroke_format = StrokeFormat.parse(trained_format or "line")

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        which: str = "best",
        *,
        strict: bool = True,
    ) -> AgentPolicy:
        """Both agents of a run directory or checkpoint file (``which``: ``best`` or
        ``last`` in a run directory); ``device`` may be ``auto``, ``cpu``, ``cuda:N``."""
        device = select_device(device) if device is not None else torch.device("cpu")
        run = load_run(path, device=device, which=which)
        policy = cls(run.sender, run.receiver, game=run.game, strict=strict, device=device)
        policy.config, policy.path = run.config, run.path
        return policy

    # ----- the policy -----------------------------------------------------------------------
    def __call__(self, observation: Mapping[str, Any], agent: str) -> np.ndarray | int:
        """The action of ``agent`` (``sender_*`` or ``receiver_*``) for its observation."""
        if not isinstance(observation, Mapping):
            raise TypeError(
                f"observation must be the env's dict for {agent!r}, got {type(observation).__name__}"
            )
        role = str(agent).split("_")[0]
        if role not in ("sender", "receiver"):
            raise ValueError(f"AgentPolicy acts for sender_* and receiver_* agents, not {agent!r}")
        if getattr(self, role) is None:
            raise ValueError(f"this AgentPolicy has no {role}, so it cannot act for {agent!r}")
        phase = int(observation.get("phase", 0 if role == "sender" else 1))  # 0 draw, 1 choose
        if role == "sender":
            return self.draw(observation) if phase == 0 else self._blank_strokes()
        return self.choose(observation) if phase == 1 else 0

    def draw(self, observation: Mapping[str, Any]) -> np.ndarray:
        """Strokes ``float32 [n_lines, size]`` within the stroke format's bounds for a sender
        observation."""
        image = self._image(observation, "image", "sender")
        with torch.no_grad(), self._eval_mode():
            strokes = self.sender(image[None])
        size = self.stroke_format.size
        if not isinstance(strokes, Tensor) or strokes.dim() != 3 or strokes.shape[-1] != size:
            raise ValueError(
                f"the sender must return {self.stroke_format} strokes [N, n_lines, {size}], "
                f"got {_describe(strokes)}"
            )
        if self.n_lines is not None and strokes.shape[1] != self.n_lines:
            raise ValueError(
                f"the sender drew {strokes.shape[1]} strokes but its game has {self.n_lines}"
            )
        low, high = (torch.from_numpy(b) for b in self.stroke_format.bounds())
        return strokes[0].float().cpu().clamp(low, high).numpy()

    def choose(self, observation: Mapping[str, Any]) -> int:
        """The index of the candidate the receiver scores highest for the sketch."""
        sketch = self._image(observation, "sketch", "receiver")
        n_candidates = len(candidate_images(observation))
        problem = self._candidate_problem(n_candidates)
        if problem:
            raise ValueError(problem)
        candidates = torch.stack(
            [self._image(observation, f"candidate_{i}", "receiver") for i in range(n_candidates)]
        )
        with torch.no_grad(), self._eval_mode():
            scores = self.receiver(sketch[None, None], candidates[None])
        if not isinstance(scores, Tensor) or tuple(scores.shape) != (1, 1, n_candidates):
            raise ValueError(
                f"the receiver must return scores [B, G, C] = [1, 1, {n_candidates}], "
                f"got {_describe(scores)}"
            )
        return int(scores.argmax(-1))

    # ----- matching envs --------------------------------------------------------------------
    def check_env(self, env: Any) -> None:
        """Raise ``ValueError`` when ``env`` (parallel or AEC sketch env) plays a game these
        agents cannot: other image size, stroke count, sketch polarity or (``strict``)
        number of candidates. Warns when the stroke width or rasteriser differs."""
        problems = []
        sender_space = env.observation_space("sender_0")["image"]
        height, width = sender_space.shape[:2]
        if self.image_size is not None and (height, width) != self.image_size:
            problems.append(f"images are {height}x{width} px, trained on {_size(self.image_size)}")
        n_lines = env.action_space("sender_0").shape[0]
        if self.sender is not None and self.n_lines is not None and n_lines != self.n_lines:
            trained = getattr(self, "path", None) or "these agents"
            problems.append(f"the env wants {n_lines} strokes, {trained} draws {self.n_lines}")
        if self.receiver is not None:
            problems.append(self._candidate_problem(env.action_space("receiver_0").n))
        core = getattr(getattr(env, "unwrapped", env), "core", None)
        if core is not None and core.stroke_format != self.stroke_format:
            problems.append(
                f"the env's strokes are {core.stroke_format}, these agents draw and read "
                f"{self.stroke_format}"
            )
        if core is not None and self.settings:
            if "invert" in self.settings and bool(core.invert) != bool(self.settings["invert"]):
                problems.append(
                    f"sketches are {_polarity(core.invert)}, trained on "
                    f"{_polarity(self.settings['invert'])}"
                )
            drawn = {k: getattr(core, k) for k in ("sigma2", "kernel", "composite")}
            trained = {k: self.settings.get(k, v) for k, v in drawn.items()}
            if drawn != trained:
                warnings.warn(
                    f"the env renders strokes with {drawn}, the agents were trained with "
                    f"{trained}; sketches will look different to them",
                    stacklevel=2,
                )
        problems = [p for p in problems if p]
        if problems:
            raise ValueError(
                "these agents cannot play this env: "
                + "; ".join(problems)
                + ". Make the env with the trained settings: parallel_env(**policy.env_options())"
            )

    def env_options(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``sketchenv.parallel_env`` that rebuild the trained game
        (``overrides`` win, e.g. ``split="test"``, ``render_mode="human"``, ``seed=0``)."""
        if not self.settings:
            raise ValueError(
                "env_options needs the trained game: build the policy with game=... "
                "or AgentPolicy.from_checkpoint(...)"
            )
        options = {
            key: self.settings[key]
            for key in (
                "game",
                "n_distractors",
                "n_lines",
                "sigma2",
                "kernel",
                "composite",
                "invert",
                "stroke_format",
            )
            if key in self.settings
        }
        if self.config is not None:
            options.update(dataset=self.config.dataset, root=self.config.data_root)
            if self.image_size is not None and self.image_size[0] == self.image_size[1]:
                options["image_size"] = self.image_size[0]  # as trained, whatever the default
        return options | overrides

    # ----- internals ------------------------------------------------------------------------
    def _modules(self) -> list[nn.Module]:
        return [m for m in (self.sender, self.receiver) if isinstance(m, nn.Module)]

    def _pick_device(self, device: str | torch.device | None) -> torch.device:
        if device is not None:
            return select_device(str(device))
        for module in self._modules():
            for param in module.parameters():
                return param.device
        return torch.device("cpu")

    def _expected_image_size(self) -> tuple[int, int] | None:
        if "image_size" in self.settings:
            return tuple(int(s) for s in self.settings["image_size"])  # type: ignore[return-value]
        for agent in (self.sender, self.receiver):
            size = getattr(getattr(agent, "encoder", None), "image_size", None)
            if size is not None:
                return tuple(size)  # type: ignore[return-value]
        return None

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode while acting, then each module's own mode again (training may go on)."""
        modules = self._modules()
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            yield
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)

    def _image(self, observation: Mapping[str, Any], key: str, role: str) -> Tensor:
        """uint8 ``[H, W, 3]`` observation entry -> float ``[3, H, W]`` in [0, 1] on device."""
        if key not in observation:
            raise ValueError(
                f"{role} observation has no {key!r} (keys: {sorted(observation)}); "
                f"is this the {role}'s observation?"
            )
        pixels = np.asarray(observation[key])
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(
                f"observation[{key!r}] must be a uint8 image [H, W, 3], got shape "
                f"{pixels.shape} and dtype {pixels.dtype}"
            )
        if self.image_size is not None and pixels.shape[:2] != self.image_size:
            raise ValueError(
                f"observation[{key!r}] is {pixels.shape[0]}x{pixels.shape[1]} px but these "
                f"agents were trained on {_size(self.image_size)} images; make the env with "
                f"image_size={self.image_size[0]} (see AgentPolicy.env_options)"
            )
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
        return image.to(self.device).float().div_(255)

    def _candidate_problem(self, n_candidates: int) -> str | None:
        """Why ``n_candidates`` does not fit (under ``strict``), or None when it does."""
        if self.strict and self.n_candidates is not None and n_candidates != self.n_candidates:
            return (
                f"the receiver was trained with {self.n_candidates} candidates but the game has "
                f"{n_candidates} (make the env with n_distractors={self.n_candidates - 1}, or "
                "pass strict=False to let it play with another number)"
            )
        return None

    def _blank_strokes(self) -> np.ndarray:
        """The idle sender's placeholder (the env ignores it); shaped like a real action."""
        low, high = self.stroke_format.bounds()
        return np.broadcast_to(np.clip(0, low, high), (self.n_lines or 1, len(low))).copy()


def candidate_images(observation: Mapping[str, Any]) -> list[np.ndarray]:
    """``candidate_0, candidate_1, ...`` of a receiver observation, in order."""
    n = sum(1 for key in observation if str(key).startswith("candidate_"))
    if n == 0:
        raise ValueError("receiver observation has no candidate_0, candidate_1, ... images")
    return [np.asarray(observation[f"candidate_{i}"]) for i in range(n)]


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]} px"


def _polarity(invert: bool) -> str:
    return "black on white (invert=True)" if invert else "white on black (invert=False)"


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return type(value).__name__
