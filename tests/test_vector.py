"""The vectorised env: N parallel envs' games, batched, with same-step autoreset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sketchenv

OPTIONS = {"n_lines": 3, "image_size": 32, "split": "test"}


def play_both(game: str, n: int, rounds: int, copy: bool, **extra) -> None:
    """Step a vector env and n parallel envs (seeds 7 + i) with the same random actions;
    every observation, reward, termination and info must agree."""
    options = {**OPTIONS, "game": game, **extra}
    if game == "original":
        options["n_distractors"] = 9
    vector = sketchenv.vector_env(n, copy=copy, **options)
    envs = [sketchenv.parallel_env(**options) for _ in range(n)]
    batched, _ = vector.reset(seed=7)
    singles = [env.reset(seed=7 + i)[0] for i, env in enumerate(envs)]
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        for phase, agent in enumerate(("sender_0", "receiver_0")):
            for i, single in enumerate(singles):
                for who in single:
                    for key, value in single[who].items():
                        np.testing.assert_array_equal(batched[who][key][i], value, err_msg=key)
                        assert batched[who]["phase"][i] == phase
            assert vector.observation_space(agent).contains(batched[agent])
            for i, env in enumerate(envs):
                np.testing.assert_array_equal(vector.state()[i], env.state())
            if agent == "sender_0":
                space = vector.action_space(agent)
                action = rng.uniform(space.low, space.high).astype(np.float32)
            else:
                action = rng.integers(vector.n_candidates, size=n)
            batched, rewards, terminations, truncations, infos = vector.step({agent: action})
            steps = [env.step({agent: action[i]}) for i, env in enumerate(envs)]
            for i, (observation, reward, terminated, truncated, info) in enumerate(steps):
                for who in vector.possible_agents:
                    assert rewards[who][i] == reward[who] and truncations[who][i] == truncated[who]
                    assert terminations[who][i] == terminated[who]
                    assert {k: v[i] for k, v in infos[who].items()} == info[who]
                if agent == "sender_0":
                    singles[i] = observation
        singles = [env.reset()[0] for env in envs]  # the next games: the vector env's autoreset


@pytest.mark.parametrize("game", ["original", "oo-different"])
def test_the_vector_env_plays_the_games_of_n_parallel_envs(game):
    play_both(game, n=3, rounds=3, copy=True)


def test_without_copies_the_same_games_are_played_in_reused_buffers():
    play_both("original", n=4, rounds=2, copy=False)
    vector = sketchenv.vector_env(2, copy=False, seed=0, **OPTIONS)
    first, _ = vector.reset()
    kept = first["receiver_0"]["candidate_0"].copy()
    vector.step({"sender_0": np.zeros((2, 3, 4), np.float32)})
    vector.step({"receiver_0": np.zeros(2, np.int64)})
    second, _ = vector.reset()
    assert np.shares_memory(first["receiver_0"]["candidate_0"], second["receiver_0"]["candidate_0"])
    assert not np.array_equal(kept, second["receiver_0"]["candidate_0"])  # overwritten


def test_with_copies_an_observation_outlives_the_next_games():
    vector = sketchenv.vector_env(2, seed=0, **OPTIONS)
    first, _ = vector.reset()
    kept = first["receiver_0"]["candidate_0"].copy()
    vector.reset()
    np.testing.assert_array_equal(first["receiver_0"]["candidate_0"], kept)


def test_a_seed_repeats_the_games_and_slots_differ():
    vector = sketchenv.vector_env(3, **OPTIONS)
    first = vector.reset(seed=11)[0]["sender_0"]["image"].copy()
    again = vector.reset(seed=11)[0]["sender_0"]["image"]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[0], first[1])


def test_the_vector_env_plays_any_stroke_format_as_the_parallel_envs_do():
    play_both("oo-same", n=3, rounds=2, copy=True, stroke_format="quadratic+opacity+colour")
    vector = sketchenv.vector_env(2, stroke_format="cubic+width", **OPTIONS)
    assert vector.action_space("sender_0").shape == (2, 3, 9)
    vector.reset(seed=0)
    with pytest.raises(ValueError, match=r"'width' values must lie in \[0.25, 4\]"):
        vector.step({"sender_0": np.zeros((2, 3, 9), np.float32)})


def test_spaces_are_the_single_spaces_batched():
    vector = sketchenv.vector_env(5, **OPTIONS)
    assert vector.action_space("sender_0").shape == (5, 3, 4)
    assert vector.single_action_space("receiver_0").n == vector.n_candidates
    assert vector.observation_space("receiver_0")["sketch"].shape == (5, 32, 32, 3)
    assert vector.metadata["autoreset_mode"] == "same-step"


def test_bad_actions_and_options_are_explained():
    vector = sketchenv.vector_env(2, seed=0, **OPTIONS)
    with pytest.raises(RuntimeError, match="before reset"):
        vector.step({"sender_0": np.zeros((2, 3, 4), np.float32)})
    vector.reset()
    cases = [
        ({"sender_0": np.zeros((3, 4), np.float32)}, ValueError, r"shape \(2, 3, 4\)"),
        ({"sender_0": np.full((2, 3, 4), np.nan, np.float32)}, ValueError, "NaN"),
        ({"sender_0": np.full((2, 3, 4), 2.0, np.float32)}, ValueError, r"\[-1, 1\]"),
        ({"sender_0": np.zeros((2, 3, 4), bool)}, TypeError, "real-valued"),
        ({"receiver_0": np.zeros(2, np.int64)}, ValueError, "must include 'sender_0'"),
        ({"someone": 1}, ValueError, "unknown agents"),
        ([1, 2], TypeError, "dict"),
    ]
    for actions, error, message in cases:
        with pytest.raises(error, match=message):
            vector.step(actions)
    vector.step({"sender_0": torch.zeros(2, 3, 4)})  # a tensor is fine
    for choices, error, message in [
        (np.array([0, 100]), ValueError, "candidate indices in"),
        (np.array([0.0, 1.0]), TypeError, "integer"),
        (np.array([0]), ValueError, r"shape \(2,\)"),
    ]:
        with pytest.raises(error, match=message):
            vector.step({"receiver_0": choices})
    for bad, error in [(0, ValueError), (2.5, ValueError), (True, ValueError)]:
        with pytest.raises(error, match="num_envs"):
            sketchenv.vector_env(bad, **OPTIONS)
    with pytest.raises(ValueError, match="does not render"):
        sketchenv.vector_env(2, render_mode="rgb_array", **OPTIONS)
    with pytest.raises(TypeError, match="copy"):
        sketchenv.vector_env(2, copy="no", **OPTIONS)
