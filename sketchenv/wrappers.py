"""The game with one observation space and one action space for both agents.

Libraries built for homogeneous agents (SuperSuit's ``pettingzoo_env_to_vec_env_v1`` and
``concat_vec_envs_v1``, and the Stable-Baselines3 or CleanRL-style PPO on top of them)
need every agent to have the same spaces. :func:`shared_spaces` gives them:

- observation: one flat ``uint8`` vector ``[agent, phase, *picture]``: ``agent`` is 0 for
  the sender and 1 for the receiver, and ``picture`` is the env's ``state()`` (sender's
  image, sketch, candidates side by side), flattened, with what this agent may not see set
  to 0: the sender sees only its image, the receiver only the sketch and the candidates;
- action: one ``Box`` of ``size * n_lines + C`` numbers: the sender's strokes are its first
  ``size * n_lines`` (its stroke format's ``size`` columns per stroke, within their bounds;
  lines: ``(x0, y0, x1, y1)`` in [-1, 1]), the receiver picks the argmax of its last ``C``
  (in [-1, 1]); ``infos[agent]["action_mask"]`` marks the numbers that count for the
  agent in the current phase (none for the agent that waits).

The default ``Dict`` observations of ``sketchenv.parallel_env`` stay the env's own.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pettingzoo.utils.wrappers import BaseParallelWrapper

from sketchenv.env import RECEIVER, SENDER, SketchParallelEnv, acting_agent


class SharedSpaces(BaseParallelWrapper):
    """A :class:`SketchParallelEnv` whose two agents share their spaces (module docs)."""

    def __init__(self, env: SketchParallelEnv) -> None:
        if not isinstance(getattr(env, "unwrapped", None), SketchParallelEnv):
            raise TypeError(
                f"shared_spaces wraps a sketchenv parallel env, got {type(env).__name__}"
            )
        super().__init__(env)
        game = env.unwrapped
        self.n_lines, self.n_candidates = game.core.n_lines, game.n_candidates
        self.stroke_size = game.core.stroke_format.size
        self._n_stroke_numbers = self.stroke_size * self.n_lines
        height, width, _ = game.state_space.shape
        self._tile = width // (self.n_candidates + 2)  # one picture's width in the state
        size = 2 + height * width * 3
        self._observation_space = spaces.Box(0, 255, (size,), np.uint8)
        sender = game.action_space(SENDER)
        scores = np.ones(self.n_candidates, np.float32)
        self._action_space = spaces.Box(
            np.concatenate([sender.low.ravel(), -scores]),
            np.concatenate([sender.high.ravel(), scores]),
            dtype=np.float32,
        )

    def observation_space(self, agent: str) -> spaces.Box:
        return self._observation_space

    def action_space(self, agent: str) -> spaces.Box:
        return self._action_space

    def reset(self, seed: int | None = None, options: dict | None = None):
        observations, infos = self.env.reset(seed=seed, options=options)
        return self._observations(observations), self._with_masks(infos)

    def step(self, actions: dict):
        acting = acting_agent(actions, self.env.unwrapped.render_state()["phase"])
        action = np.asarray(actions[acting], dtype=np.float32)
        if action.shape != self._action_space.shape:
            raise ValueError(
                f"{acting}'s action must have shape {self._action_space.shape} "
                f"({self.stroke_size} x "
                f"{self.n_lines} stroke numbers, then {self.n_candidates} candidate scores), "
                f"got {action.shape}"
            )
        if acting == SENDER:
            strokes = action[: self._n_stroke_numbers].reshape(self.n_lines, self.stroke_size)
            inner = {SENDER: strokes}
        else:
            inner = {RECEIVER: int(np.argmax(action[self._n_stroke_numbers :]))}
        observations, rewards, terminations, truncations, infos = self.env.step(inner)
        return (
            self._observations(observations),
            rewards,
            terminations,
            truncations,
            self._with_masks(infos),
        )

    def _observations(self, inner: dict) -> dict:
        """The flat observation of every agent the env returned an observation for."""
        state = self.env.unwrapped.state()
        seen = {SENDER: state.copy(), RECEIVER: state}
        seen[SENDER][:, self._tile :] = 0  # the sender sees its image only
        seen[RECEIVER][:, : self._tile] = 0  # the receiver never sees the sender's image
        return {
            agent: np.concatenate(
                [np.array([index, inner[agent]["phase"]], np.uint8), seen[agent].ravel()]
            )
            for index, agent in enumerate((SENDER, RECEIVER))
            if agent in inner
        }

    def _with_masks(self, infos: dict) -> dict:
        strokes = self._n_stroke_numbers
        for agent, info in infos.items():
            mask = np.zeros(self._action_space.shape, bool)
            if agent == SENDER and info["phase"] == 0:
                mask[:strokes] = True
            elif agent == RECEIVER and info["phase"] == 1:
                mask[strokes:] = True
            info["action_mask"] = mask
        return infos


def shared_spaces(env: SketchParallelEnv) -> SharedSpaces:
    """Both agents with one flat observation space and one action space (module docs)."""
    return SharedSpaces(env)
