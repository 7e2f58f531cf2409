"""Shared spaces for both agents, and SuperSuit's vector envs built on them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

import sketchenv
from sketchenv.wrappers import shared_spaces

OPTIONS = {"n_lines": 3, "n_distractors": 4, "image_size": 16, "seed": 0}
SIZE = 16 * 16 * 3  # one picture, flattened


def make(**options):
    return shared_spaces(sketchenv.parallel_env(**{**OPTIONS, **options}))


def test_both_agents_see_their_own_part_of_the_state_in_one_space():
    env = make()
    observations, infos = env.reset(seed=1)
    assert env.observation_space("sender_0") == env.observation_space("receiver_0")
    assert env.action_space("sender_0") == env.action_space("receiver_0")
    inner = env.unwrapped
    state = inner.state().ravel()  # [H, W * 7, 3]: tile t is columns t*16 .. t*16+15
    pictures = {agent: obs[2:].reshape(16, 7 * 16, 3) for agent, obs in observations.items()}
    tiles = {agent: np.split(p, 7, axis=1) for agent, p in pictures.items()}
    np.testing.assert_array_equal(tiles["sender_0"][0], inner.render_state()["sender_image"])
    assert all((tile == 0).all() for tile in tiles["sender_0"][1:])
    assert (tiles["receiver_0"][0] == 0).all()
    for i, tile in enumerate(tiles["receiver_0"][2:]):
        np.testing.assert_array_equal(tile, inner.render_state()["candidates"][i])
    assert list(observations["sender_0"][:2]) == [0, 0] and list(
        observations["receiver_0"][:2]
    ) == [1, 0]
    assert state.size == observations["sender_0"].size - 2
    assert (
        infos["sender_0"]["action_mask"][:12].all()
        and not infos["sender_0"]["action_mask"][12:].any()
    )
    assert not infos["receiver_0"]["action_mask"].any()  # the receiver waits in phase 0


def test_the_shared_action_draws_the_first_numbers_and_picks_the_argmax():
    env, plain = make(), sketchenv.parallel_env(**OPTIONS)
    env.reset(seed=2)
    plain.reset(seed=2)
    strokes = np.array([[-0.5, -0.5, 0.5, 0.5], [0.5, -0.5, -0.5, 0.5], [0, -1, 0, 1]], np.float32)
    action = np.concatenate([strokes.ravel(), np.zeros(5)]).astype(np.float32)
    observations, *_, infos = env.step({"sender_0": action, "receiver_0": np.zeros(17, np.float32)})
    expected, *_ = plain.step({"sender_0": strokes})
    sketch = observations["receiver_0"][2:].reshape(16, 7 * 16, 3)[:, 16:32]
    np.testing.assert_array_equal(sketch, expected["receiver_0"]["sketch"])
    assert infos["receiver_0"]["action_mask"][12:].all() and observations["receiver_0"][1] == 1
    scores = np.zeros(17, np.float32)
    scores[12 + 3] = 1.0  # candidate 3
    _, rewards, terminations, _, infos = env.step({"receiver_0": scores})
    assert infos["receiver_0"]["choice"] == 3 and all(terminations.values())
    assert rewards["sender_0"] == float(infos["receiver_0"]["target"] == 3)
    with pytest.raises(ValueError, match=r"shape \(17,\)"):
        env.reset()
        env.step({"sender_0": strokes})


def test_the_shared_action_follows_the_stroke_format():
    env = make(stroke_format="cubic+opacity")  # 9 numbers per stroke
    space = env.action_space("sender_0")
    assert space.shape == (3 * 9 + 5,)
    assert space.low[8] == 0.0 and space.low[0] == -1.0 and (space.low[27:] == -1).all()
    _, infos = env.reset(seed=0)
    assert infos["sender_0"]["action_mask"][:27].all()
    assert not infos["sender_0"]["action_mask"][27:].any()
    strokes = np.tile(np.array([-0.5, 0, 0, 0.5, 0, -0.5, 0.5, 0, 1], np.float32), (3, 1))
    plain = sketchenv.parallel_env(**OPTIONS, stroke_format="cubic+opacity")
    plain.reset(seed=0)
    expected, *_ = plain.step({"sender_0": strokes})
    action = np.concatenate([strokes.ravel(), np.zeros(5, np.float32)])
    observations, *_ = env.step({"sender_0": action, "receiver_0": action})
    sketch = observations["receiver_0"][2:].reshape(16, 7 * 16, 3)[:, 16:32]
    np.testing.assert_array_equal(sketch, expected["receiver_0"]["sketch"])


def test_pettingzoos_parallel_api_test_passes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parallel_api_test(make(), num_cycles=20)


def test_supersuit_vector_envs_run_on_it():
    supersuit = pytest.importorskip("supersuit")
    vector = supersuit.pettingzoo_env_to_vec_env_v1(make())
    vector = supersuit.concat_vec_envs_v1(vector, 3, num_cpus=0, base_class="gymnasium")
    observations, _ = vector.reset(seed=0)
    assert observations.shape == (6, 2 + 7 * SIZE)  # 3 games x 2 agents
    rng = np.random.default_rng(0)
    wins = games = 0
    for step in range(40):
        actions = rng.uniform(-1, 1, (6, 17)).astype(np.float32)
        observations, rewards, terminations, truncations, _ = vector.step(actions)
        assert observations.shape == (6, 2 + 7 * SIZE) and not truncations.any()
        assert (terminations == (step % 2 == 1)).all()  # every game ends at its second step
        assert (rewards[0::2] == rewards[1::2]).all()  # sender and receiver share the reward
        if step % 2:
            wins, games = wins + rewards[0::2].sum(), games + 3
        assert (observations[:, 1] == 0).all() == (step % 2 == 1)  # reset: phase 0 again
    assert 0 < wins / games < 0.5  # random choices among 5 candidates: about 20 %


def test_only_a_sketchenv_env_is_wrapped():
    with pytest.raises(TypeError, match="sketchenv parallel env"):
        shared_spaces(object())
