"""The sketching game as a PettingZoo environment, one game per episode.

The rules live in `sketchenv.game.SketchGame`; this module only turns one game of it into
the agent-by-agent API that RL libraries, scripted policies and people use.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral, Real
from typing import ClassVar

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv
from pettingzoo.utils import wrappers
from pettingzoo.utils.conversions import parallel_to_aec

from sketchenv.game import GameBatch, SketchGame
from sketchenv.rendering import VIEWS, compose_frame
from sketchenv.strokes import StrokeFormat

SENDER = "sender_0"
RECEIVER = "receiver_0"
INFO_KEYS = ("phase", "choice", "target", "correct", "class_correct")


class SketchParallelEnv(ParallelEnv):
    """A referential drawing game: `sender_0` draws strokes, `receiver_0` picks the image.

    One game per episode, two steps. Both agents stay in `agents` until the episode ends
    and both act at every `step`, but only one action counts: in phase 0 the sender draws
    (a `Box` of shape `(n_lines, stroke_format.size)`: by default lines `(x0, y0, x1, y1)`
    in [-1, 1], x to the right, y down; see `sketchenv.strokes` for curves, width, opacity
    and colour, whose bounds the Box carries per column) and
    the receiver's action is ignored; in phase 1 the receiver picks a candidate
    (`Discrete(C)`) and the sender's action is ignored. Both observations carry the
    `phase`. Rewards are 1 to both agents when the pick is the target, else 0; the
    target's index appears in `infos` (and `render_state()`) only after the pick.

    Args:
        game: "original", "oo-same" or "oo-different" (SPEC §1).
        dataset: a registered name (default "shapes", built in), "imagefolder:PATH", or a
            torch Dataset of `(image [3, H, W] in [0, 1], label)`.
        split: which split of a named dataset.
        n_distractors: candidates minus one (default: 99 in original, one class each in OO).
        image_size: side in pixels of a named dataset's images (default: the dataset's).
        n_lines, sigma2, kernel, composite, invert: the sketch and its rasteriser.
        stroke_format: what a stroke is, e.g. "line" (default), "cubic" or
            "quadratic+width+opacity" (`sketchenv.strokes.StrokeFormat`).
        render_mode: None, "rgb_array" (one picture) or "human" (a pygame window).
        render_view: what an "rgb_array" picture shows: "spectator" (default; everything,
            the sender's image included: for watching and recording) or "receiver" (the
            sketch and the candidates only: for showing a receiving participant).
        seed: seeds the game sequence (like `reset(seed=...)`); None draws a fresh seed.
        root, download: where a named dataset lives and whether to fetch it.
    """

    metadata: ClassVar[dict] = {
        "name": "sketch_v0",
        "render_modes": ["human", "rgb_array"],
        "render_fps": 1,
        "is_parallelizable": True,
    }

    def __init__(
        self,
        game: str = "original",
        dataset="shapes",
        split: str = "train",
        n_distractors: int | None = None,
        image_size: int | None = None,
        n_lines: int = 20,
        sigma2: float = 5e-4,
        kernel: str = "exp",
        composite: str = "softor",
        invert: bool = True,
        stroke_format: StrokeFormat | str = "line",
        render_mode: str | None = None,
        render_view: str = "spectator",
        seed: int | None = None,
        root: str = "./data",
        download: bool = False,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"unknown render_mode {render_mode!r}; choose None or one of "
                f"{self.metadata['render_modes']}"
            )
        if render_view not in VIEWS:
            raise ValueError(f"unknown render_view {render_view!r}; choose one of {list(VIEWS)}")
        self.core = SketchGame(
            _resolve_dataset(dataset, split, image_size, root, download),
            game,
            n_distractors=n_distractors,
            n_lines=n_lines,
            sigma2=sigma2,
            kernel=kernel,
            composite=composite,
            invert=invert,
            stroke_format=stroke_format,
        )
        height, width = self.core.image_size
        if image_size is not None and (height, width) != (image_size, image_size):
            raise ValueError(
                f"image_size={image_size} but the dataset's images are {height}x{width}; "
                "pass image_size=None for a Dataset object, or resize it"
            )
        self.render_mode = render_mode
        self.render_view = render_view
        self.possible_agents = [SENDER, RECEIVER]
        self.agents: list[str] = []
        self.n_candidates = self.core.n_candidates

        def image() -> spaces.Box:  # one object per key, so seeding one never touches another
            return spaces.Box(0, 255, (height, width, 3), np.uint8)

        self._observation_spaces = {
            SENDER: spaces.Dict({"image": image(), "phase": spaces.Discrete(2)}),
            RECEIVER: spaces.Dict(  # (key, space) pairs keep candidate_2 before candidate_10
                [
                    ("sketch", image()),
                    *((f"candidate_{i}", image()) for i in range(self.n_candidates)),
                    ("phase", spaces.Discrete(2)),
                ]
            ),
        }
        self._action_spaces = {
            SENDER: sender_space(self.core),
            RECEIVER: spaces.Discrete(self.n_candidates),
        }
        # Everything either agent can see, side by side: for centralised critics (MAPPO).
        self.state_space = spaces.Box(
            0, 255, (height, width * (self.n_candidates + 2), 3), np.uint8
        )

        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(_check_seed(seed))
        self._game = None  # the current GameBatch (one game); None before the first reset
        self._episode = -1
        self._wins = 0
        self._window = None

    def observation_space(self, agent: str) -> spaces.Space:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._action_spaces[agent]

    # ----- episode ------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None):
        """Start a new game; `seed` restarts the sequence of games (same seed, same games).
        `options` are ignored, as PettingZoo's API test expects: settings are constructor
        arguments."""
        if seed is not None:
            self._generator.manual_seed(_check_seed(seed))
        self._game = self.core.sample_game(self._generator)
        self._sender_image = _to_hwc(self._game.sender_images[0, 0])
        self._candidates = _to_hwc(self._game.candidates[0])
        self._candidate_obs = {f"candidate_{i}": c for i, c in enumerate(self._candidates)}
        self._blank = np.full_like(self._sender_image, 255 if self.core.invert else 0)
        self._sketch = None
        self._phase = 0
        self._choice = None
        self._episode += 1
        self.agents = self.possible_agents[:]
        if self.render_mode == "human":
            self.render()
        return self._observations(), self._infos()

    def step(self, actions: Mapping):
        """Apply the acting agent's action (the other one's is ignored); see the class docs."""
        if self._game is None:
            raise RuntimeError("step() called before reset(): call env.reset() first")
        if not self.agents:
            raise RuntimeError("step() called after the episode ended: call env.reset()")
        acting_agent(actions, self._phase)  # checks the actions; the phase says who acts
        rewards = dict.fromkeys(self.agents, 0.0)
        terminations = dict.fromkeys(self.agents, False)
        truncations = dict.fromkeys(self.agents, False)
        if self._phase == 0:
            strokes = self._check_strokes(actions[SENDER])
            self._sketch = _to_hwc(self.core.render(torch.from_numpy(strokes)))  # no grad needed
            self._phase = 1
        else:
            self._choice = self._check_choice(actions[RECEIVER])
            won = self._choice == self._target
            self._wins += int(won)
            rewards = dict.fromkeys(self.agents, float(won))
            terminations = dict.fromkeys(self.agents, True)
        observations, infos = self._observations(), self._infos()
        if self._choice is not None:
            self.agents = []
        if self.render_mode == "human":
            self.render()
        return observations, rewards, terminations, truncations, infos

    # ----- rendering ----------------------------------------------------------------------
    def state(self) -> np.ndarray:
        """The global state: the sender's image, the sketch (blank until it is drawn) and
        the candidates, side by side in one uint8 picture ``[H, W * (C + 2), 3]``."""
        if self._game is None:
            raise RuntimeError("state() called before reset(): call env.reset() first")
        sketch = self._blank if self._sketch is None else self._sketch
        return np.concatenate([self._sender_image, sketch, *self._candidates], axis=1)

    def render_state(self) -> dict:
        """What renderers draw (see docs/architecture.md); the target only after the pick."""
        if self._game is None:
            raise RuntimeError("render_state() called before reset(): call env.reset() first")
        return {
            "sender_image": self._sender_image,
            "sketch": self._sketch,
            "candidates": self._candidates,
            "phase": self._phase,
            "choice": self._choice,
            "target": None if self._choice is None else self._target,
            "episode": self._episode,
            "wins": self._wins,
            "n_lines": self.core.n_lines,
            "stroke_format": str(self.core.stroke_format),
        }

    def render(self) -> np.ndarray | None:
        """`rgb_array`: the picture of `sketchenv.rendering.compose_frame`; `human`: a window."""
        if self.render_mode is None:
            gymnasium.logger.warn(
                "render() called without a render_mode; pass render_mode='rgb_array' or 'human'"
            )
            return None
        if self.render_mode == "rgb_array":
            return compose_frame(self.render_state(), self.render_view)
        if self._window is None:
            from sketchenv.human import GameWindow  # pygame only when a window is wanted

            self._window = GameWindow()
        self._window.show(self.render_state())
        return None

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None

    @property
    def current_game(self) -> GameBatch | None:
        """The current game as a `GameBatch` with B = G = 1 (dataset ids, labels and the target),
        for logging and analysis; None before the first reset. Policies must not read it."""
        return self._game

    # ----- internals ----------------------------------------------------------------------
    @property
    def _target(self) -> int:
        return int(self._game.targets[0, 0])

    def _observations(self) -> dict:
        sketch = self._blank if self._sketch is None else self._sketch
        return {
            SENDER: {"image": self._sender_image, "phase": self._phase},
            RECEIVER: {"sketch": sketch, **self._candidate_obs, "phase": self._phase},
        }

    def _infos(self) -> dict:
        info = dict.fromkeys(INFO_KEYS, 0)
        info["phase"] = self._phase
        info["choice"] = info["target"] = -1
        if self._choice is not None:
            picked_label = self._game.candidate_labels[0, self._choice]
            info.update(
                choice=self._choice,
                target=self._target,
                correct=int(self._choice == self._target),
                class_correct=int(picked_label == self._game.sender_labels[0, 0]),
            )
        return {agent: dict(info) for agent in self.agents}

    def _check_strokes(self, action) -> np.ndarray:
        return check_strokes(
            action, self.core.stroke_format, self.core.n_lines, f"{SENDER}'s action"
        )

    def _check_choice(self, action) -> int:
        if isinstance(action, torch.Tensor | np.ndarray) and action.ndim == 0:
            action = action.item()
        if isinstance(action, bool | np.bool_) or not isinstance(action, Integral):
            kind = "float" if isinstance(action, Real) else type(action).__name__
            raise TypeError(
                f"{RECEIVER}'s action must be an integer candidate index, got {kind} {action!r}"
            )
        if not 0 <= action < self.n_candidates:
            raise ValueError(
                f"{RECEIVER}'s action must be a candidate index in [0, {self.n_candidates}), got {action}"
            )
        return int(action)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_window"] = None  # a window belongs to one process; reopened on render()
        return state


def parallel_env(**kwargs) -> SketchParallelEnv:
    """The parallel env; keyword options as `SketchParallelEnv`."""
    return SketchParallelEnv(**kwargs)


class _CheckActionsWhenGiven(wrappers.BaseWrapper):
    """`parallel_to_aec` holds the sender's action until the receiver's turn; this checks it
    when it is given, so a bad one is refused at the step that gave it. (The receiver acts
    last, so its action reaches the parallel env's own checks at its step.)"""

    def __init__(self, parallel: SketchParallelEnv) -> None:
        super().__init__(parallel_to_aec(parallel))
        self._parallel = parallel

    def step(self, action) -> None:
        parallel = self._parallel
        if parallel.agents and parallel._phase == 0 and self.agent_selection == SENDER:
            acting_agent({SENDER: action}, 0)  # None is only for agents whose episode ended
            parallel._check_strokes(action)
        super().step(action)


def raw_env(**kwargs):
    """The AEC version without order checks: the parallel env through `parallel_to_aec`,
    each action checked when it is given."""
    return _CheckActionsWhenGiven(SketchParallelEnv(**kwargs))


def env(**kwargs):
    """The AEC version, with PettingZoo's order checks (step/observe before reset, ...)."""
    return wrappers.OrderEnforcingWrapper(raw_env(**kwargs))


def _resolve_dataset(dataset, split: str, image_size: int | None, root: str, download: bool):
    if isinstance(dataset, str):
        from sketchenv.datasets import make_dataset

        return make_dataset(dataset, split, image_size=image_size, root=root, download=download)
    return dataset  # SketchGame checks that it is a Dataset


def _to_hwc(images: torch.Tensor) -> np.ndarray:
    """Float `[..., 3, H, W]` in [0, 1] -> uint8 `[..., H, W, 3]`."""
    hwc = images.detach().movedim(-3, -1).contiguous()  # a copy, so the in-place ops are safe
    return hwc.mul_(255).round_().clamp_(0, 255).to(torch.uint8).numpy()


def acting_agent(actions, phase: int) -> str:
    """The agent whose action counts in ``phase``, once ``actions`` is a dict of known
    agents that includes it (else a clear error)."""
    if not isinstance(actions, Mapping):
        raise TypeError(f"actions must be a dict {{agent: action}}, got {type(actions).__name__}")
    unknown = set(actions) - {SENDER, RECEIVER}
    if unknown:
        raise ValueError(
            f"unknown agents in actions: {sorted(unknown)}; agents are {[SENDER, RECEIVER]}"
        )
    acting = SENDER if phase == 0 else RECEIVER
    if actions.get(acting) is None:
        raise ValueError(
            f"phase {phase}: actions must include {acting!r} (it acts now; "
            "the other agent's action is ignored)"
        )
    return acting


def sender_space(core) -> spaces.Box:
    """The sender's action space for a `SketchGame`: ``n_lines`` rows of its stroke format,
    each column within its bounds (coordinates [-1, 1], options as `StrokeFormat.bounds`)."""
    low, high = core.stroke_format.bounds()
    shape = (core.n_lines, core.stroke_format.size)
    return spaces.Box(np.broadcast_to(low, shape), np.broadcast_to(high, shape), dtype=np.float32)


def check_strokes(
    action, stroke_format: StrokeFormat, n_lines: int, who: str, batch: tuple[int, ...] = ()
) -> np.ndarray:
    """A sender's action (or ``batch`` of them) as float32 ``[*batch, n_lines,
    stroke_format.size]`` strokes within the format's bounds, or a clear error naming ``who``
    and the column at fault."""
    if isinstance(action, torch.Tensor):
        action = action.detach().cpu().numpy()
    try:
        strokes = np.asarray(action)
    except (TypeError, ValueError) as error:  # e.g. ragged nested lists
        raise TypeError(f"{who} must be an array of numbers: {error}") from None
    if strokes.dtype == np.bool_ or strokes.dtype.kind not in "fiu":
        raise TypeError(f"{who} must be a real-valued (float) array, got dtype {strokes.dtype}")
    shape, columns = (*batch, n_lines, stroke_format.size), stroke_format.columns
    if strokes.shape != shape:
        raise ValueError(
            f"{who} must have shape {shape} (n_lines strokes of {', '.join(columns)}), "
            f"got {strokes.shape}"
        )
    strokes = strokes.astype(np.float32)
    if not np.isfinite(strokes).all():
        raise ValueError(f"{who} contains NaN or infinite coordinates")
    low, high = stroke_format.bounds()
    flat = strokes.reshape(-1, len(low))
    for j in np.flatnonzero((flat < low).any(0) | (flat > high).any(0)):
        coordinate = columns[j][0] in "xy"
        raise ValueError(
            f"{who}: {'stroke coordinates' if coordinate else repr(columns[j]) + ' values'} "
            f"must lie in [{low[j]:g}, {high[j]:g}]{' (canvas units)' * coordinate}, found "
            f"[{flat[:, j].min():.3g}, {flat[:, j].max():.3g}]; clip or squash "
            f"({'tanh' if coordinate else 'sigmoid'}) them"
        )
    return strokes


def check_choices(action, n: int, n_candidates: int) -> np.ndarray:
    """The receivers' batched action as ``n`` candidate indices, or a clear error."""
    if isinstance(action, torch.Tensor):
        action = action.detach().cpu().numpy()
    choices = np.asarray(action)
    if choices.dtype == np.bool_ or choices.dtype.kind not in "iu":
        raise TypeError(
            f"{RECEIVER}'s batched action must be integer candidate indices, got dtype {choices.dtype}"
        )
    if choices.shape != (n,):
        raise ValueError(f"{RECEIVER}'s batched action must have shape ({n},), got {choices.shape}")
    if choices.min() < 0 or choices.max() >= n_candidates:
        raise ValueError(
            f"{RECEIVER}'s choices must be candidate indices in [0, {n_candidates}), found "
            f"[{choices.min()}, {choices.max()}]"
        )
    return choices.astype(np.int64)


def _check_seed(seed) -> int:
    """``seed`` as a non-negative Python int (numpy integers too, as RL libraries pass)."""
    if not isinstance(seed, Integral) or isinstance(seed, bool | np.bool_) or seed < 0:
        raise TypeError(f"seed must be a non-negative integer or None, got {seed!r}")
    if seed >= 2**63:
        raise ValueError(f"seed must be below 2**63, got {seed}")
    return int(seed)
