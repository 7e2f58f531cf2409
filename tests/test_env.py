"""The PettingZoo env: official API tests, multi-episode determinism, rules, bad input."""

import pickle
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pettingzoo
import pytest
import torch
from pettingzoo.test import api_test, parallel_api_test, render_test, state_test
from pettingzoo.utils.conversions import parallel_to_aec
from torch.utils.data import Dataset

import sketchenv
from sketchenv.env import INFO_KEYS
from sketchenv.rendering import BACKGROUND, RIGHT, WRONG, compose_frame

VARIANTS = ["original", "oo-same", "oo-different"]


class Noise(Dataset):
    """Random 16 px images, 5 classes, label `i % 5`; `index_of` finds an image's item."""

    def __init__(self, n=40):
        self.classes = ["a", "b", "c", "d", "e"]
        self.labels = [i % 5 for i in range(n)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)), self.labels[i]

    def hwc(self, i):
        return (self[i][0] * 255).round().byte().permute(1, 2, 0).numpy()

    def index_of(self, pixels):
        if not hasattr(self, "_index"):
            self._index = {self.hwc(i).tobytes(): i for i in range(len(self))}
        return self._index[pixels.tobytes()]


NOISE = Noise()


def make(game="original", **kwargs):
    kwargs.setdefault("dataset", NOISE)
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("n_lines", 3)
    if game == "original":
        kwargs.setdefault("n_distractors", 4)
    return sketchenv.parallel_env(game=game, **kwargs)


def play(env, n_episodes, seed=None):
    """Random play; returns every (observations, rewards, terminations, infos) seen."""
    for i, agent in enumerate(env.possible_agents):
        env.action_space(agent).seed(100 + i)
    trace = []
    for episode in range(n_episodes):
        observations, infos = env.reset(seed=seed if episode == 0 else None)
        trace.append((observations, infos))
        while env.agents:
            actions = {agent: env.action_space(agent).sample() for agent in env.agents}
            observations, rewards, terminations, truncations, infos = env.step(actions)
            trace.append((observations, rewards, terminations, truncations, infos))
    return trace


def assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, tuple | list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    else:
        assert a == b and type(a) is type(b)


@pytest.mark.parametrize("game", VARIANTS)
def test_pettingzoo_api_tests_pass(game):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Observation is not a NumPy array": Dict observations
        parallel_api_test(make(game), num_cycles=40)
        api_test(parallel_to_aec(make(game)), num_cycles=40)
        api_test(sketchenv.env(game=game, dataset=NOISE, n_lines=3, n_distractors=4), num_cycles=40)


@pytest.mark.parametrize("game", VARIANTS)
def test_state_is_everything_both_agents_see_and_passes_pettingzoos_state_test(game):
    kwargs = {"game": game, "dataset": NOISE, "n_lines": 3, "n_distractors": 4}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either: a NumPy picture, in its space
        state_test(sketchenv.env(**kwargs), make(game), num_cycles=20)
    env = make(game)
    observations, _ = env.reset(seed=3)
    width = observations["sender_0"]["image"].shape[1]
    tiles = np.split(env.state(), env.n_candidates + 2, axis=1)
    np.testing.assert_array_equal(tiles[0], observations["sender_0"]["image"])
    np.testing.assert_array_equal(tiles[1], observations["receiver_0"]["sketch"])  # blank
    strokes = np.array([[-0.8, -0.8, 0.8, 0.8]] * 3, np.float32)
    observations, *_ = env.step({"sender_0": strokes})
    tiles = np.split(env.state(), env.n_candidates + 2, axis=1)
    np.testing.assert_array_equal(tiles[1], observations["receiver_0"]["sketch"])  # drawn
    for i, tile in enumerate(tiles[2:]):
        np.testing.assert_array_equal(tile, observations["receiver_0"][f"candidate_{i}"])
    assert env.state_space.contains(env.state()) and tiles[0].shape[1] == width
    with pytest.raises(RuntimeError, match="before reset"):
        make(game).state()


@pytest.mark.parametrize("game", VARIANTS)
def test_render_test_passes_in_both_modes(game, monkeypatch):
    pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")

    def env_fn(render_mode=None):
        return sketchenv.env(game=game, dataset=NOISE, n_distractors=4, render_mode=render_mode)

    render_test(env_fn)


@pytest.mark.parametrize("game", VARIANTS)
def test_twenty_episodes_repeat_exactly_by_seed(game):
    first = play(make(game, seed=None), 20, seed=7)
    assert_same(first, play(make(game, seed=None), 20, seed=7))
    assert_same(first, play(make(game, seed=7), 20))  # constructor seed == reset seed
    env = make(game)
    play(env, 3, seed=1)
    assert_same(first, play(env, 20, seed=7))  # reset(seed) restarts the sequence
    other = play(make(game), 20, seed=8)
    images = [step[0]["sender_0"]["image"] for step in first[::3]]
    other_images = [step[0]["sender_0"]["image"] for step in other[::3]]
    assert not all(np.array_equal(a, b) for a, b in zip(images, other_images, strict=True))


@pytest.mark.parametrize("game", VARIANTS)
def test_variant_rules_hold_over_many_games(game):
    env = make(game)
    targets = set()
    for _ in range(60):
        observations, _ = env.reset()
        receiver = observations["receiver_0"]
        candidates = [receiver[f"candidate_{i}"] for i in range(env.n_candidates)]
        ids = [NOISE.index_of(c) for c in candidates]
        assert len(set(ids)) == len(ids)
        if game != "original":
            assert sorted(NOISE.labels[i] for i in ids) == list(range(5))  # one per class
        env.step({"sender_0": env.action_space("sender_0").sample()})
        _, _, _, _, infos = env.step({"receiver_0": 0})
        target = infos["receiver_0"]["target"]
        targets.add(target)
        sender = NOISE.index_of(observations["sender_0"]["image"])
        assert NOISE.labels[sender] == NOISE.labels[ids[target]]
        assert (sender == ids[target]) == (game != "oo-different")
        state = env.render_state()
        assert np.array_equal(state["candidates"][target], candidates[target])
        current = env.current_game
        assert current.candidate_ids[0].tolist() == ids and int(current.targets) == target
        assert int(current.sender_ids) == sender
    assert len(targets) >= 4  # the target's position is random


def test_observations_infos_and_rewards_follow_the_contract():
    env = make("oo-same", render_mode="rgb_array")
    observations, infos = env.reset(seed=3)
    sender, receiver = observations["sender_0"], observations["receiver_0"]
    assert sender["phase"] == receiver["phase"] == 0
    assert receiver.keys() == {"sketch", "phase"} | {f"candidate_{i}" for i in range(5)}
    assert (receiver["sketch"] == 255).all()  # blank paper before the sender draws
    assert env.observation_space("sender_0").contains(sender)
    assert env.observation_space("receiver_0").contains(receiver)
    assert infos["sender_0"] == {
        "phase": 0,
        "choice": -1,
        "target": -1,
        "correct": 0,
        "class_correct": 0,
    }
    state = env.render_state()
    assert state["sketch"] is None and state["target"] is None and state["choice"] is None
    assert np.array_equal(state["sender_image"], sender["image"])

    strokes = np.array([[-1, -1, 1, 1], [-1, 1, 1, -1], [0, -1, 0, 1]], np.float32)
    observations, rewards, terminations, _, infos = env.step(
        {"sender_0": strokes, "receiver_0": "ignored in phase 0"}
    )
    sketch = observations["receiver_0"]["sketch"]
    expected = env.core.render(torch.from_numpy(strokes)).mul(255).round().byte()
    assert np.array_equal(sketch, expected.permute(1, 2, 0).numpy())
    assert sketch[0, 0, 0] < 128 and sketch[0, 5, 0] > 128  # black stroke through the corner
    assert rewards == {"sender_0": 0.0, "receiver_0": 0.0} and not any(terminations.values())
    assert observations["sender_0"]["phase"] == infos["receiver_0"]["phase"] == 1
    assert infos["receiver_0"]["target"] == -1 and env.render_state()["target"] is None
    assert np.array_equal(env.render_state()["sketch"], sketch)

    _, rewards, terminations, truncations, infos = env.step({"receiver_0": 0, "sender_0": None})
    target = infos["sender_0"]["target"]
    assert infos["receiver_0"].keys() == infos["sender_0"].keys() == set(INFO_KEYS)
    assert all(terminations.values()) and not any(truncations.values()) and env.agents == []
    assert rewards["sender_0"] == rewards["receiver_0"] == float(target == 0)

    env.reset(seed=3)  # same game again: now pick the target
    env.step({"sender_0": strokes})
    _, rewards, _, _, infos = env.step({"receiver_0": np.int64(target)})
    assert rewards == {"sender_0": 1.0, "receiver_0": 1.0}
    assert infos["receiver_0"] == {
        "phase": 1,
        "choice": target,
        "target": target,
        "correct": 1,
        "class_correct": 1,
    }
    state = env.render_state()
    assert (state["choice"], state["target"], state["n_lines"]) == (target, target, 3)
    assert state["episode"] == 1  # the second game of this env
    assert state["wins"] == 1 + int(target == 0)


def test_rgb_array_frame_marks_choice_and_target():
    env = make("oo-same", render_mode="rgb_array")
    env.reset(seed=0)
    before = env.render()
    assert before.dtype == np.uint8 and before.ndim == 3 and before.shape[2] == 3
    env.step({"sender_0": np.zeros((3, 4), np.float32)})
    _, _, _, _, infos = env.step({"receiver_0": 1})
    won = infos["receiver_0"]["correct"] == 1
    after = env.render()
    assert after.shape == before.shape
    assert tuple(after[0, 0]) == (RIGHT if won else WRONG)
    assert tuple(before[0, 0]) not in (RIGHT, WRONG)
    state = env.render_state()
    assert np.array_equal(compose_frame(state), after)


def test_actions_of_several_types_are_accepted():
    env = make("original")
    for strokes, choice in [
        (np.zeros((3, 4), np.float64), 1),
        ([[0.5, 0, 0, 0]] * 3, np.int32(2)),
        (torch.zeros(3, 4), torch.tensor(3)),
        (np.ones((3, 4), np.int64), np.array(4)),
    ]:
        env.reset()
        env.step({"sender_0": strokes})
        _, _, _, _, infos = env.step({"receiver_0": choice})
        assert infos["receiver_0"]["choice"] == int(choice)


def test_bad_actions_give_clear_errors():
    env = make("original")
    with pytest.raises(RuntimeError, match="before reset"):
        env.step({"sender_0": np.zeros((3, 4), np.float32)})
    env.reset()
    bad_strokes = [
        (np.zeros((4, 4), np.float32), ValueError, r"shape \(3, 4\)"),
        (np.zeros(12, np.float32), ValueError, r"shape \(3, 4\)"),
        (np.full((3, 4), np.nan, np.float32), ValueError, "NaN"),
        (np.full((3, 4), np.inf), ValueError, "NaN or infinite"),
        (np.full((3, 4), 1.5), ValueError, r"\[-1, 1\]"),
        (np.zeros((3, 4), bool), TypeError, "real-valued"),
        ([["a"] * 4] * 3, TypeError, "real-valued"),
        (None, ValueError, "must include 'sender_0'"),
    ]
    for strokes, error, message in bad_strokes:
        with pytest.raises(error, match=message):
            env.step({"sender_0": strokes})
    with pytest.raises(ValueError, match="unknown agents"):
        env.step({"sender_0": np.zeros((3, 4)), "referee": 1})
    with pytest.raises(TypeError, match="dict"):
        env.step([np.zeros((3, 4))])
    env.step({"sender_0": np.zeros((3, 4), np.float32)})  # the failed steps changed nothing
    for choice, error, message in [
        (5, ValueError, r"\[0, 5\)"),
        (-1, ValueError, r"\[0, 5\)"),
        (1.0, TypeError, "integer"),
        (True, TypeError, "integer"),
        (np.array([1]), TypeError, "integer"),
        (None, ValueError, "must include 'receiver_0'"),
    ]:
        with pytest.raises(error, match=message):
            env.step({"receiver_0": choice, "sender_0": np.zeros((3, 4))})
    env.step({"receiver_0": 0})
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step({"receiver_0": 0})
    aec = sketchenv.env(dataset=NOISE, n_distractors=4)
    with pytest.raises(AssertionError, match="reset"):
        aec.step(np.zeros((20, 4), np.float32))


def test_bad_options_give_clear_errors():
    with pytest.raises(ValueError, match="original, oo-same, oo-different"):
        make("oo")
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_strokes'"):
        make(n_strokes=3)
    with pytest.raises(ValueError, match="render_mode"):
        make(render_mode="ansi")
    with pytest.raises(ValueError, match="image_size=32"):
        make(image_size=32)  # NOISE images are 16 px
    with pytest.raises(ValueError, match="dataset size"):
        make(n_distractors=40)
    with pytest.raises(TypeError, match="torch Dataset"):
        make(dataset=42)
    with pytest.raises(RuntimeError, match="before reset"):
        make().render_state()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"invert": "no"}, TypeError, "invert must be True or False, got 'no'"),
        ({"seed": 1.5}, TypeError, "seed must be a non-negative integer or None, got 1.5"),
        ({"seed": -1}, TypeError, "seed must be a non-negative integer"),
        ({"seed": 2**70}, ValueError, "seed must be below 2"),
        ({"sigma2": True}, ValueError, "sigma2 must be a positive number, got True"),
    ],
)
def test_env_options_of_the_wrong_type_are_refused(options, error, message):
    with pytest.raises(error, match=message):
        make(**options)


def test_aec_env_refuses_a_bad_action_at_the_step_that_gives_it():
    aec = sketchenv.env(dataset=NOISE, n_lines=3, n_distractors=4)
    aec.reset(seed=0)
    assert aec.agent_selection == "sender_0"
    with pytest.raises(ValueError, match="NaN or infinite"):
        aec.step(np.full((3, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"must have shape \(3, 4\)"):
        aec.step(np.zeros((2, 4), np.float32))


def test_env_takes_numpy_numbers_as_rl_libraries_pass_them():
    assert make(sigma2=np.float32(1e-3), n_lines=np.int32(3)).core.sigma2 == pytest.approx(1e-3)


def test_env_takes_numpy_integer_seeds_as_rl_libraries_pass_them():
    a, b = make(), make()
    first, _ = a.reset(seed=np.int64(7))
    second, _ = b.reset(seed=7)
    assert np.array_equal(first["sender_0"]["image"], second["sender_0"]["image"])
    with pytest.raises(TypeError, match="seed must be a non-negative integer or None, got 'x'"):
        a.reset(seed="x")


def test_unknown_dataset_name_is_a_clear_error():
    pytest.importorskip("sketchenv.datasets", reason="dataset registry not available")
    with pytest.raises((ValueError, KeyError), match="shapes"):
        sketchenv.parallel_env(dataset="no-such-dataset")


def test_pickled_env_continues_identically_mid_episode():
    env = make("oo-different", render_mode="rgb_array")
    env.reset(seed=5)
    env.step({"sender_0": np.zeros((3, 4), np.float32)})
    copy = pickle.loads(pickle.dumps(env))
    a = env.step({"receiver_0": 2})
    b = copy.step({"receiver_0": 2})
    assert_same(a, b)
    assert_same(play(env, 3), play(copy, 3))
    assert np.array_equal(env.render(), copy.render())


def test_aec_env_plays_turn_by_turn():
    aec = sketchenv.env(game="oo-same", dataset=NOISE, n_lines=3, seed=0)
    aec.reset(seed=1)
    order, rewards = [], {}
    for agent in aec.agent_iter():
        observation, reward, terminated, truncated, _ = aec.last()
        order.append((agent, observation["phase"]))
        rewards[agent] = reward
        if terminated or truncated:
            action = None
        elif agent == "sender_0":
            action = np.zeros((3, 4), np.float32)
        else:
            action = 0
        aec.step(action)
    assert order[:4] == [("sender_0", 0), ("receiver_0", 0), ("sender_0", 1), ("receiver_0", 1)]
    assert rewards["sender_0"] == rewards["receiver_0"] in (0.0, 1.0)


def test_registered_with_pettingzoo():
    if not hasattr(pettingzoo, "make"):
        pytest.skip("this PettingZoo has no registry")
    par = pettingzoo.make("parallel", "sketchenv/Sketch-v0", dataset=NOISE, n_distractors=4)
    aec = pettingzoo.make("aec", "sketchenv/Sketch-v0", dataset=NOISE, game="oo-same")
    assert isinstance(par, sketchenv.SketchParallelEnv)
    assert aec.unwrapped.n_candidates == 5


def test_defaults_are_the_papers_original_game_on_shapes():
    env = sketchenv.parallel_env(seed=0)
    assert env.core.game == "original" and env.n_candidates == 100  # 99 distractors
    receiver = env.observation_space("receiver_0")
    candidates = [f"candidate_{i}" for i in range(100)]
    assert list(receiver.spaces) == ["sketch", *candidates, "phase"]  # in index order
    assert (
        receiver["candidate_99"].shape == (64, 64, 3) and receiver["candidate_99"].dtype == np.uint8
    )
    assert env.action_space("sender_0").shape == (20, 4)
    assert env.action_space("sender_0").dtype == np.float32
    assert env.action_space("receiver_0").n == 100
    observations, _ = env.reset()
    assert env.observation_space("receiver_0").contains(observations["receiver_0"])


def test_real_photos_through_imagefolder(cifar_subset):
    env = sketchenv.parallel_env(
        game="oo-different", dataset=f"imagefolder:{cifar_subset}", split="val", seed=0
    )
    observations, _ = env.reset()
    assert env.n_candidates == 10
    assert observations["receiver_0"]["candidate_9"].shape == (32, 32, 3)
    assert observations["sender_0"]["image"].std() > 10  # a photo, not a blank


def test_human_mode_window_opens_lazily_and_closes(monkeypatch):
    pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    env = make("oo-same", render_mode="human")
    assert env._window is None
    env.reset()
    assert env._window is not None and env.render() is None
    env.close()
    assert env._window is None


def test_compose_frame_layout_and_marks():
    rng = np.random.default_rng(0)
    state = {
        "sender_image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        "sketch": None,
        "candidates": rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8),
        "phase": 1,
        "choice": 4,
        "target": 1,
    }
    frame = compose_frame(state)
    tile = 64 + 6  # 8 px enlarged 8x to the 64 px minimum, plus a 3 px frame on each side
    columns, rows = 3, 2  # 5 candidates in a near-square grid
    assert frame.shape == (6 + 4 + (1 + rows) * (tile + 4) + 4, columns * (tile + 4) + 4, 3)
    assert tuple(frame[0, 0]) == WRONG  # the bar: a lost game
    grid_top = 6 + 4 + tile + 8
    target_corner = frame[grid_top, 4 + (tile + 4)]  # candidate 1: row 0, column 1
    choice_corner = frame[grid_top + tile + 4, 4 + (tile + 4)]  # candidate 4: row 1, column 1
    assert tuple(target_corner) == RIGHT and tuple(choice_corner) == WRONG
    first_pixel = frame[6 + 4 + 3 : 6 + 4 + 3 + 8, 4 + 3 : 4 + 3 + 8]  # enlarged 8x8
    assert (first_pixel == state["sender_image"][0, 0]).all()
    with pytest.raises(ValueError, match="uint8"):
        compose_frame(state | {"candidates": state["candidates"].astype(np.float32)})


def test_the_receivers_view_leaves_the_senders_image_out():
    env = make("oo-same", render_mode="rgb_array", render_view="receiver")
    env.reset(seed=0)
    receiver = env.render()
    spectator = compose_frame(env.render_state())
    assert receiver.shape == spectator.shape
    top, left, size = 6 + 4, 4, 64 + 6  # the sender's tile of the spectator's view
    assert (receiver[top : top + size, left : left + size] == BACKGROUND).all()
    assert not (spectator[top : top + size, left : left + size] == BACKGROUND).all()
    below = slice(top + size, None)  # sketch and candidates: the same in both views
    assert np.array_equal(receiver[below], spectator[below])
    with pytest.raises(ValueError, match="render_view"):
        make("oo-same", render_view="sender")
    with pytest.raises(ValueError, match="unknown view"):
        compose_frame(env.render_state(), "everything")


def test_env_plays_inside_no_grad_and_inference_mode():
    # A fresh process: the rasteriser checks itself once per process, on the first sketch.
    script = (
        "import numpy as np, torch, sketchenv\n"
        "env = sketchenv.parallel_env(game='oo-same', image_size=16, n_lines=2, seed=0)\n"
        "for context in (torch.no_grad, torch.inference_mode):\n"
        "    with context():\n"
        "        env.reset()\n"
        "        env.step({'sender_0': np.zeros((2, 4), np.float32)})\n"
        "        env.step({'receiver_0': 0})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


# ----- found by mutation testing: options reaching the game, spaces, counters, messages --


def test_named_datasets_get_every_option_and_the_documented_defaults(monkeypatch):
    import sketchenv.datasets

    calls = []

    def recording_make_dataset(name, split, **options):
        calls.append((name, split, options))
        return NOISE

    monkeypatch.setattr(sketchenv.datasets, "make_dataset", recording_make_dataset)
    sketchenv.parallel_env(dataset="cifar10", n_distractors=4)
    sketchenv.parallel_env(dataset="stl10", split="val", image_size=16, root="/d", download=True,
                           n_distractors=4)  # fmt: skip
    sketchenv.parallel_env(n_distractors=4)
    assert calls == [
        ("cifar10", "train", {"image_size": None, "root": "./data", "download": False}),
        ("stl10", "val", {"image_size": 16, "root": "/d", "download": True}),
        ("shapes", "train", {"image_size": None, "root": "./data", "download": False}),
    ]


def test_sketch_options_reach_the_game():
    env = make(kernel="sigmoid", composite="max", invert=False, sigma2=2e-3, n_lines=2)
    core = env.core
    assert (core.kernel, core.composite, core.invert, core.sigma2, core.n_lines) == (
        "sigmoid", "max", False, 2e-3, 2
    )  # fmt: skip


def test_spaces_are_exact():
    env = make("oo-same")  # 5 candidates of 16 px, 3 lines
    image = gymnasium.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    phase = gymnasium.spaces.Discrete(2)
    assert env.observation_space("sender_0") == gymnasium.spaces.Dict(
        {"image": image, "phase": phase}
    )
    receiver = env.observation_space("receiver_0")
    assert list(receiver.spaces) == ["sketch", *(f"candidate_{i}" for i in range(5)), "phase"]
    assert all(receiver[k] == image for k in receiver.spaces if k != "phase")
    assert receiver["phase"] == phase
    assert env.action_space("sender_0") == gymnasium.spaces.Box(-1.0, 1.0, (3, 4), np.float32)
    assert env.action_space("receiver_0") == gymnasium.spaces.Discrete(5)
    assert env.state_space == gymnasium.spaces.Box(0, 255, (16, 16 * 7, 3), np.uint8)
    assert env.agents == [] and env.possible_agents == ["sender_0", "receiver_0"]


@pytest.mark.parametrize(("invert", "paper"), [(True, 255), (False, 0)])
def test_the_sketch_is_blank_paper_until_drawn(invert, paper):
    env = make(invert=invert)
    observations, _ = env.reset()
    sketch = observations["receiver_0"]["sketch"]
    assert sketch.dtype == np.uint8 and (sketch == paper).all()
    assert (env.state()[:, 16:32] == paper).all()


def test_episode_and_win_counters_and_the_render_state():
    env = make("original")
    states = []
    for choice in (0, 0, 1, 2):  # targets of seed 0 known only after each pick
        env.reset()
        states.append(env.render_state())
        env.step({"sender_0": np.zeros((3, 4), np.float32)})
        env.step({"receiver_0": choice})
        states.append(env.render_state())
    wins = np.cumsum([s["choice"] == s["target"] for s in states[1::2]]).tolist()
    assert [s["episode"] for s in states] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [s["wins"] for s in states[1::2]] == wins and wins[-1] >= 1
    assert set(states[0]) == {"sender_image", "sketch", "candidates", "phase", "choice",
                              "target", "episode", "wins", "n_lines", "stroke_format"}  # fmt: skip
    assert (states[0]["phase"], states[1]["phase"], states[0]["n_lines"]) == (0, 1, 3)


def test_human_mode_shows_every_reset_and_step():
    class FakeWindow:
        shown: list

        def __init__(self):
            self.shown = []

        def show(self, state):
            self.shown.append(state["phase"])

    env = make("original", render_mode="human")
    env._window = window = FakeWindow()
    env.reset()
    env.step({"sender_0": np.zeros((3, 4), np.float32)})
    env.step({"receiver_0": 0})
    assert window.shown == [0, 1, 1]


def test_render_without_a_mode_warns_with_the_fix(monkeypatch):
    warned = []
    monkeypatch.setattr(gymnasium.logger, "warn", warned.append)
    env = make()
    env.reset()
    assert env.render() is None
    assert warned == [
        "render() called without a render_mode; pass render_mode='rgb_array' or 'human'"
    ]


def test_a_pickled_env_leaves_its_window_behind():
    env = make(render_mode="human")
    env._window = lambda: None  # stands for a pygame window, which cannot be pickled
    copy = pickle.loads(pickle.dumps(env))
    assert copy._window is None and env._window is not None


def test_env_messages_are_exact():
    def message(error, call):
        with pytest.raises(error) as caught:
            call()
        return str(caught.value)

    env = make("original")  # 3 lines, 5 candidates
    assert message(RuntimeError, lambda: env.step({})) == (
        "step() called before reset(): call env.reset() first"
    )
    for method in ("state", "render_state"):
        assert message(RuntimeError, getattr(env, method)) == (
            f"{method}() called before reset(): call env.reset() first"
        )
    env.reset()
    assert message(TypeError, lambda: env.step([1])) == (
        "actions must be a dict {agent: action}, got list"
    )
    assert message(ValueError, lambda: env.step({"receiver_0": 1})) == (
        "phase 0: actions must include 'sender_0' (it acts now; the other agent's action is "
        "ignored)"
    )
    assert message(ValueError, lambda: env.step({"sender_0": np.zeros((4, 4))})) == (
        "sender_0's action must have shape (3, 4) (n_lines strokes of x0, y0, x1, y1), got (4, 4)"
    )
    assert message(ValueError, lambda: env.step({"sender_0": np.full((3, 4), -1.5)})) == (
        "sender_0's action: stroke coordinates must lie in [-1, 1] (canvas units), found "
        "[-1.5, -1.5]; clip or squash (tanh) them"
    )
    assert message(TypeError, lambda: env.step({"sender_0": [[0.0, 1.0], [0.0]]})).startswith(
        "sender_0's action must be an array of numbers: "
    )
    env.step({"sender_0": np.zeros((3, 4))})
    for choice, described in [(1.0, "float 1.0"), ("a", "str 'a'"),
                              (np.float32(1.5), "float np.float32(1.5)"),
                              (np.array([1]), "ndarray array([1])")]:  # fmt: skip
        assert message(TypeError, lambda c=choice: env.step({"receiver_0": c})) == (
            f"receiver_0's action must be an integer candidate index, got {described}"
        )
    env.step({"receiver_0": 0})
    assert message(RuntimeError, lambda: env.step({"receiver_0": 0})) == (
        "step() called after the episode ended: call env.reset()"
    )
    assert message(ValueError, lambda: make(image_size=32)) == (
        "image_size=32 but the dataset's images are 16x16; pass image_size=None for a Dataset "
        "object, or resize it"
    )


def test_seeds_up_to_two_to_the_63():
    make(seed=2**63 - 1).reset(seed=126)
    with pytest.raises(ValueError) as err:
        make(seed=2**63)
    assert str(err.value) == f"seed must be below 2**63, got {2**63}"


def test_stroke_and_choice_checks_return_what_the_game_takes():
    from sketchenv.env import check_choices, check_strokes
    from sketchenv.strokes import StrokeFormat

    strokes = check_strokes(np.zeros((3, 4), np.float64), StrokeFormat(), 3, "x")
    assert strokes.dtype == np.float32 and strokes.shape == (3, 4)
    assert check_strokes(torch.full((3, 4), -1.0), StrokeFormat(), 3, "x").min() == -1.0
    choices = check_choices(torch.tensor([1, 4], dtype=torch.int32), 2, 5)
    assert choices.dtype == np.int64 and choices.tolist() == [1, 4]


def test_aec_env_checks_the_senders_action_when_given_and_ignores_the_idle_agents():
    aec = sketchenv.env(dataset=NOISE, n_lines=3, n_distractors=4)
    aec.reset(seed=0)
    with pytest.raises(ValueError, match="phase 0: actions must include 'sender_0'"):
        aec.step(None)  # the sender acts now: None is only for agents whose episode ended
    aec.step(np.zeros((3, 4), np.float32))
    aec.step(99)  # phase 0: the receiver's action is ignored, whatever it is
    assert aec.agent_selection == "sender_0"
    aec.step(np.full((3, 4), np.nan))  # phase 1: the sender's action is ignored
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        aec.step(99)
    aec.step(2)
    assert all(aec.terminations.values())


STROKE_FORMATS = ["quadratic", "cubic+opacity+colour", "line+width+opacity", "cubic+width+colour"]


@pytest.mark.parametrize("stroke_format", STROKE_FORMATS)
def test_pettingzoo_api_tests_pass_for_each_stroke_format(stroke_format):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Observation is not a NumPy array": Dict observations
        parallel_api_test(make(stroke_format=stroke_format), num_cycles=10)
        if "width" in stroke_format:
            # api_test steps with all zeros, outside a width's Box [0.25, 4], which the env
            # rightly refuses (test_stroke_options_out_of_range_are_refused_by_column).
            return
        api_test(sketchenv.env(dataset=NOISE, n_lines=3, n_distractors=4,
                               stroke_format=stroke_format), num_cycles=10)  # fmt: skip


def test_the_sender_space_follows_the_stroke_format():
    env = make(stroke_format="cubic+width+opacity+colour")
    space = env.action_space("sender_0")
    assert space.shape == (3, 8 + 1 + 1 + 3) and space.dtype == np.float32
    assert space.low[0].tolist() == [-1.0] * 8 + [0.25, 0.0, 0.0, 0.0, 0.0]
    assert space.high[0].tolist() == [1.0] * 8 + [4.0, 1.0, 1.0, 1.0, 1.0]
    assert np.array_equal(space.low[2], space.low[0])
    assert make(stroke_format="quadratic").action_space("sender_0").shape == (3, 6)
    env.reset(seed=0)
    assert env.render_state()["stroke_format"] == "cubic+width+opacity+colour"


def test_a_coloured_stroke_colours_the_receivers_sketch():
    env = make(stroke_format="line+colour", n_lines=1)
    env.reset(seed=0)
    row8 = -1 + 8 * 2 / 15  # the centre of pixel row 8 of 16
    red = np.array([[-0.8, row8, 0.8, row8, 1.0, 0.0, 0.0]], np.float32)
    observations, *_ = env.step({"sender_0": red, "receiver_0": 0})
    sketch = observations["receiver_0"]["sketch"]
    assert sketch[8, 8].tolist() == [255, 0, 0]  # the stroke passes through this pixel centre
    assert sketch[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (0, 1.5, "stroke coordinates must lie in [-1, 1] (canvas units), found [-0.5, 1.5]"),
        (8, 0.0, "'width' values must lie in [0.25, 4], found [0, 1]; clip or squash (sigmoid)"),
        (9, 1.2, "'opacity' values must lie in [0, 1], found [0.5, 1.2]"),
        (12, -0.1, "'b' values must lie in [0, 1], found [-0.1, 0.5]"),
    ],
)
def test_stroke_options_out_of_range_are_refused_by_column(column, value, message):
    env = make(stroke_format="cubic+width+opacity+colour")
    env.reset(seed=0)
    strokes = np.full((3, 13), 0.5, np.float32)
    strokes[:, :8] = -0.5
    strokes[:, 8] = 1.0
    strokes[1, column] = value
    with pytest.raises(ValueError) as err:
        env.step({"sender_0": strokes, "receiver_0": 0})
    assert message in str(err.value)
    with pytest.raises(ValueError, match=r"shape \(3, 13\) \(n_lines strokes of x0, y0, .*, b\)"):
        env.step({"sender_0": strokes[:, :4], "receiver_0": 0})
