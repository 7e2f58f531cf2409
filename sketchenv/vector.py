"""N sketching games stepped at once on the batched core, for reinforcement learning.

``sketchenv.vector_env(num_envs=N, ...)`` plays the same games as N copies of
``sketchenv.parallel_env(...)`` seeded ``seed, seed + 1, ..., seed + N - 1`` (Gymnasium's
vector-env rule), and returns the same observations, rewards and infos, with every value
batched along a first axis of length N (``observation_space(agent)`` is
``gymnasium.vector.utils.batch_space`` of the single env's space). All N games move in
step: phase 0 (the senders draw, one call to the rasteriser for all N sketches), then
phase 1 (the receivers choose).

Autoreset, "same step": the step that ends the games (phase 1) returns their rewards,
terminations and final infos, and already the *next* games' phase-0 observations, so
every call to ``step`` plays. (A finished game's last observation is the one its
receiver chose on: nothing new is seen at the end, so it is not returned again.)

``copy=False`` reads each step's images into the same buffers instead of new arrays (at
64 px with 100 candidates, 1.2 MB a game that need not be allocated): faster, but an
observation is then only valid until the next reset of the games, so a learner must copy
what it keeps (rollout buffers such as CleanRL's or SB3's do). Gymnasium's vector envs
name this option the same way and default to ``copy=True``, as here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

from sketchenv.env import (
    INFO_KEYS,
    RECEIVER,
    SENDER,
    SketchParallelEnv,
    _check_seed,
    _to_hwc,
    acting_agent,
    check_choices,
    check_strokes,
)


class SketchVectorEnv:
    """``num_envs`` games at once; ``copy`` as in the module docs; the other options are
    :class:`SketchParallelEnv`'s."""

    metadata: ClassVar[dict] = {"autoreset_mode": "same-step", "name": "sketch_vector_v0"}

    def __init__(
        self, num_envs: int, seed: int | None = None, copy: bool = True, **options
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if "render_mode" in options:
            raise ValueError("the vector env does not render; use parallel_env(render_mode=...)")
        self.num_envs = num_envs
        self.single = SketchParallelEnv(**options)  # the rules, spaces and checks of one game
        self.core = self.single.core
        self.possible_agents = self.single.possible_agents[:]
        self.agents = self.possible_agents[:]
        self.n_candidates = self.single.n_candidates
        self._observation_spaces = {
            agent: batch_space(self.single.observation_space(agent), num_envs)
            for agent in self.possible_agents
        }
        self._action_spaces = {
            agent: batch_space(self.single.action_space(agent), num_envs)
            for agent in self.possible_agents
        }
        self.state_space = batch_space(self.single.state_space, num_envs)
        if not isinstance(copy, bool):
            raise TypeError(f"copy must be True or False, got {copy!r}")
        self.copy = copy
        height, width = self.core.image_size
        self._buffers = (
            None
            if copy
            else (
                torch.empty((num_envs, self.n_candidates, 3, height, width), dtype=torch.uint8),
                torch.empty((num_envs, 3, height, width), dtype=torch.uint8),
            )
        )
        self._generators = [torch.Generator() for _ in range(num_envs)]
        self._seed_all(seed)
        self._phase = None  # None before the first reset

    def single_observation_space(self, agent: str) -> spaces.Space:
        return self.single.observation_space(agent)

    def single_action_space(self, agent: str) -> spaces.Space:
        return self.single.action_space(agent)

    def observation_space(self, agent: str) -> spaces.Space:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._action_spaces[agent]

    # ----- episodes -----------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None):
        """New games in every slot; ``seed`` seeds slot ``i`` with ``seed + i``. ``options``
        are ignored, as in the parallel env."""
        if seed is not None:
            self._seed_all(seed)
        self._new_games()
        return self._observations(), self._infos()

    def step(self, actions: Mapping):
        """Phase 0: ``actions[sender_0]`` strokes ``[N, n_lines, stroke size]``; phase 1:
        ``actions[receiver_0]`` choices ``[N]`` (the other agent's action is ignored)."""
        if self._phase is None:
            raise RuntimeError("step() called before reset(): call reset() first")
        acting_agent(actions, self._phase)
        n = self.num_envs
        rewards = {agent: np.zeros(n, np.float32) for agent in self.agents}
        terminations = {agent: np.zeros(n, bool) for agent in self.agents}
        truncations = {agent: np.zeros(n, bool) for agent in self.agents}
        if self._phase == 0:
            core, who = self.core, f"{SENDER}'s batched action"
            strokes = check_strokes(actions[SENDER], core.stroke_format, core.n_lines, who, (n,))
            self._sketches = _to_hwc(self.core.render(torch.from_numpy(strokes)))
            self._phase = 1
            return self._observations(), rewards, terminations, truncations, self._infos()
        choices = check_choices(actions[RECEIVER], n, self.n_candidates)
        self._choices = choices
        won = (choices == self._targets).astype(np.float32)
        rewards = {agent: won.copy() for agent in self.agents}
        terminations = {agent: np.ones(n, bool) for agent in self.agents}
        infos = self._infos()
        self._new_games()  # same-step autoreset
        return self._observations(), rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """The parallel env's ``state()`` of every game, ``[N, H, W * (C + 2), 3]``."""
        if self._phase is None:
            raise RuntimeError("state() called before reset(): call reset() first")
        candidates = [self._candidates[:, i] for i in range(self.n_candidates)]
        return np.concatenate([self._sender_images, self._sketches, *candidates], axis=2)

    def close(self) -> None:
        self.single.close()

    # ----- internals ----------------------------------------------------------------------
    def _seed_all(self, seed: int | None) -> None:
        for i, generator in enumerate(self._generators):
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(_check_seed(_check_seed(seed) + i))

    def _new_games(self) -> None:
        """One game per slot, each drawn from its own generator as a parallel env would."""
        games = [self.core.sample_game_ids(g) for g in self._generators]
        sender_ids, candidate_ids, targets = (
            torch.cat(parts) for parts in zip(*games, strict=True)
        )
        # uint8 [N, C, 3, H, W] straight from the image cache, shown as HWC views (no copy).
        into = self._buffers or (None, None)
        candidates = self.core.cache.images(candidate_ids, out=into[0])
        senders = self.core.cache.images(sender_ids[:, 0], out=into[1])
        self._candidates = candidates.permute(0, 1, 3, 4, 2).numpy()
        self._sender_images = senders.permute(0, 2, 3, 1).numpy()
        self._targets = targets[:, 0].numpy()
        self._sender_labels = self.core.labels[sender_ids[:, 0]].numpy()
        self._candidate_labels = self.core.labels[candidate_ids].numpy()
        blank = 255 if self.core.invert else 0
        self._sketches = np.full_like(self._sender_images, blank)
        self._choices = None
        self._phase = 0

    def _observations(self) -> dict:
        phase = np.full(self.num_envs, self._phase, np.int64)
        candidates = {f"candidate_{i}": self._candidates[:, i] for i in range(self.n_candidates)}
        return {
            SENDER: {"image": self._sender_images, "phase": phase},
            RECEIVER: {"sketch": self._sketches, **candidates, "phase": phase.copy()},
        }

    def _infos(self) -> dict:
        n = self.num_envs
        info = {key: np.zeros(n, np.int64) for key in INFO_KEYS}
        info["phase"][:] = self._phase
        info["choice"][:] = info["target"][:] = -1
        if self._choices is not None:
            rows = np.arange(n)
            picked = self._candidate_labels[rows, self._choices]
            info.update(
                choice=self._choices.copy(),
                target=self._targets.astype(np.int64),
                correct=(self._choices == self._targets).astype(np.int64),
                class_correct=(picked == self._sender_labels).astype(np.int64),
            )
        return {agent: {k: v.copy() for k, v in info.items()} for agent in self.agents}


def vector_env(num_envs: int, **options) -> SketchVectorEnv:
    """``num_envs`` games stepped at once; ``copy``, else options as ``sketchenv.parallel_env``."""
    return SketchVectorEnv(num_envs, **options)
