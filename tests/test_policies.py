"""agents/policies.py: trained agents playing the PettingZoo env, checked against the
batched game on the very same games."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sketchenv
from agents.checkpoint import load_run
from agents.policies import AgentPolicy
from agents.trainer import evaluate, play
from sketchenv.datasets.shapes import Shapes
from sketchenv.game import GameBatch
from train import selfplay

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

CLASSES = ["circle", "square", "triangle", "cross"]


def make_tiny_run(root: Path, *, steps: int = 36, extra: tuple[str, ...] = ()) -> Path:
    """A real self-play run (``python -m train.selfplay``) on a small folder of 16 px
    ``shapes`` images (4 classes, 4 candidates, 4 strokes); returns its run directory.
    Reused when it already exists under ``root`` (tests/test_evaluate.py shares it)."""
    folder = root / "images"
    if not folder.exists():
        for split, n_images in (("train", 360), ("val", 20), ("test", 40)):
            data = Shapes(split, image_size=16, n_images=n_images, classes=CLASSES)
            pixels = data.images(range(n_images)).mul(255).round().byte().permute(0, 2, 3, 1)
            for i, (image, label) in enumerate(zip(pixels.numpy(), data.labels, strict=True)):
                path = folder / split / CLASSES[label] / f"{i:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
    run = root / ("run" + "".join(extra).replace("-", "_"))
    if (run / "last.pt").exists():  # made earlier in this test session
        return run
    selfplay.main(
        [
            f"--dataset=imagefolder:{folder}",
            "--image-size=16",
            "--n-distractors=3",
            "--lines=4",
            "--sigma2=5e-3",
            "--backbone-width=8",
            "--batch-size=40",
            "--epochs=4",
            f"--max-steps={steps}",
            "--val-games=20",
            "--lr=3e-3",
            "--warmup-steps=2",
            "--lr-schedule=constant",
            "--device=cpu",
            f"--output={run}",
            *extra,
        ]
    )
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.getbasetemp() / "tiny-selfplay")


def play_parallel(env, sender, receiver, n_episodes: int, seed: int) -> list[dict]:
    """Episodes through the parallel API; the final infos of each."""
    finals = []
    for episode in range(n_episodes):
        observations, _ = env.reset(seed=seed if episode == 0 else None)
        while env.agents:
            actions = {
                "sender_0": sender(observations["sender_0"], "sender_0"),
                "receiver_0": receiver(observations["receiver_0"], "receiver_0"),
            }
            observations, rewards, _, _, infos = env.step(actions)
        assert rewards["sender_0"] == infos["receiver_0"]["correct"]
        finals.append(infos["receiver_0"])
    return finals


def same_games(env, n_episodes: int, seed: int) -> GameBatch:
    """The games the env plays after ``reset(seed=seed)``, as one batch of 1-game blocks."""
    generator = torch.Generator().manual_seed(seed)
    games = [env.unwrapped.core.sample_game(generator) for _ in range(n_episodes)]
    fields = GameBatch.__dataclass_fields__
    return GameBatch(**{f: torch.cat([getattr(g, f) for g in games]) for f in fields})


def test_checkpoint_policy_plays_the_env_as_the_batched_game_does(run_dir):
    policy = AgentPolicy.from_checkpoint(run_dir)
    env = sketchenv.parallel_env(**policy.env_options(split="test"))
    policy.check_env(env)
    n_episodes, seed = 60, 7
    finals = play_parallel(env, policy, policy, n_episodes, seed)
    env_choices = torch.tensor([info["choice"] for info in finals])
    env_targets = torch.tensor([info["target"] for info in finals])

    run, game = load_run(run_dir), env.unwrapped.core
    batch = same_games(env, n_episodes, seed)
    assert torch.equal(batch.targets.flatten(), env_targets)  # really the same games

    # Exactly: the env hands the receiver its sketch as 8-bit pixels; do the same here.
    with torch.no_grad():
        strokes = run.sender(batch.sender_images.flatten(0, 1)).view(n_episodes, 1, 4, 4)
        sketches = game.render(strokes).mul(255).round().div(255)
        scores = run.receiver(sketches, batch.candidates).flatten(0, 1)
    top2 = scores.topk(2).values
    determinable = top2[:, 0] - top2[:, 1] > 1e-3  # not a tie up to float rounding
    assert determinable.float().mean() >= 0.8
    assert torch.equal(scores.argmax(-1)[determinable], env_choices[determinable])

    # Roughly: the trainer's batched play and evaluation (float sketches) on those games.
    with torch.no_grad():
        batched = game.choose(play(run.sender, run.receiver, game, batch).scores).flatten()
    assert (batched == env_choices).float().mean() >= 0.9
    metrics, _ = evaluate(run.sender, run.receiver, game, [batch], torch.device("cpu"))
    env_rate = (env_choices == env_targets).float().mean().item()
    assert metrics["games"] == n_episodes
    assert abs(metrics["comm_rate"] - env_rate) <= 0.1
    assert np.mean([info["class_correct"] for info in finals]) >= env_rate


def test_aec_api_gives_the_same_episodes_as_the_parallel_api(run_dir):
    policy = AgentPolicy.from_checkpoint(run_dir)
    options = policy.env_options(split="test")
    parallel = play_parallel(sketchenv.parallel_env(**options), policy, policy, 10, seed=3)

    env = sketchenv.env(**options)
    env.reset(seed=3)
    finals = []
    while len(finals) < 10:
        for agent in env.agent_iter():
            observation, _, termination, truncation, info = env.last()
            if termination or truncation:
                if agent == "receiver_0":
                    finals.append(info)
                env.step(None)
            else:
                env.step(policy(observation, agent))
        env.reset()
    assert [f["choice"] for f in finals] == [f["choice"] for f in parallel]
    assert [f["target"] for f in finals] == [f["target"] for f in parallel]


def test_one_seat_next_to_other_policies(run_dir):
    policy = AgentPolicy.from_checkpoint(run_dir)
    env = sketchenv.parallel_env(**policy.env_options(split="test"))
    rng = np.random.default_rng(0)

    def random_sender(observation, agent):
        return rng.uniform(-1, 1, (4, 4)).astype(np.float32)

    def first_candidate(observation, agent):
        return 0

    as_receiver = play_parallel(env, random_sender, policy, 8, seed=1)
    as_sender = play_parallel(env, policy, first_candidate, 8, seed=1)
    assert all(0 <= info["choice"] < 4 for info in as_receiver)
    assert [info["choice"] for info in as_sender] == [0] * 8

    receiver_only = AgentPolicy(receiver=load_run(run_dir).receiver)
    observations, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="has no sender"):
        receiver_only(observations["sender_0"], "sender_0")
    with pytest.raises(ValueError, match="acts for sender_"):
        policy(observations["sender_0"], "player_0")


def test_in_memory_modules_act_like_the_checkpoint_and_keep_their_mode(run_dir):
    run = load_run(run_dir)
    game = run.make_game("test")
    from_file = AgentPolicy.from_checkpoint(run_dir)
    run.sender.train()
    in_memory = AgentPolicy(run.sender, run.receiver, game=game)
    env = sketchenv.parallel_env(**from_file.env_options(split="test"))
    observations, _ = env.reset(seed=5)
    strokes = in_memory(observations["sender_0"], "sender_0")
    assert strokes.dtype == np.float32 and strokes.shape == (4, 4)
    assert np.abs(strokes).max() <= 1
    np.testing.assert_array_equal(strokes, from_file(observations["sender_0"], "sender_0"))
    assert run.sender.training  # restored after acting
    # The idle receiver gets a placeholder; the idle sender (phase 1) too.
    assert in_memory(observations["receiver_0"], "receiver_0") == 0
    observations, *_ = env.step({"sender_0": strokes})
    choice = in_memory(observations["receiver_0"], "receiver_0")
    assert choice == from_file(observations["receiver_0"], "receiver_0")
    assert in_memory(observations["sender_0"], "sender_0").shape == (4, 4)

    # Any plug-in callables work; the image size then comes from the observations.
    plug_in = AgentPolicy(
        lambda images: torch.zeros(len(images), 3, 4),
        lambda sketches, candidates: candidates.mean((-1, -2, -3))[:, None, :],
    )
    env = sketchenv.parallel_env(image_size=16, n_distractors=3, n_lines=3)
    observations, _ = env.reset(seed=0)
    assert plug_in(observations["sender_0"], "sender_0").shape == (3, 4)
    observations, *_ = env.step({"sender_0": plug_in(observations["sender_0"], "sender_0")})
    brightest = int(
        np.argmax([observations["receiver_0"][f"candidate_{i}"].mean() for i in range(4)])
    )
    assert plug_in(observations["receiver_0"], "receiver_0") == brightest


def test_env_settings_that_do_not_fit_the_checkpoint_are_refused(run_dir):
    policy = AgentPolicy.from_checkpoint(run_dir)
    options = policy.env_options(split="test")
    assert options["image_size"] == 16 and options["n_lines"] == 4
    policy.config = policy.config.replace(image_size=None)  # a run left it to the default
    assert policy.env_options()["image_size"] == 16  # the size it was trained at
    for change, message in (
        ({"image_size": 24}, "24x24 px, trained on 16x16"),
        ({"n_lines": 5}, "wants 5 strokes"),
        ({"n_distractors": 2}, "trained with 4 candidates but the game has 3"),
        ({"invert": False}, "white on black"),
    ):
        env = sketchenv.parallel_env(**(options | change))
        with pytest.raises(ValueError, match=message):
            policy.check_env(env)

    with pytest.warns(UserWarning, match="renders strokes with"):
        policy.check_env(sketchenv.parallel_env(**(options | {"sigma2": 1e-3})))

    bigger = sketchenv.parallel_env(**(options | {"image_size": 24}))
    observations, _ = bigger.reset(seed=0)
    with pytest.raises(ValueError, match="trained on 16x16 px images"):
        policy(observations["sender_0"], "sender_0")

    fewer = sketchenv.parallel_env(**(options | {"n_distractors": 2}))
    observations, _ = fewer.reset(seed=0)
    observations, *_ = fewer.step({"sender_0": policy(observations["sender_0"], "sender_0")})
    with pytest.raises(ValueError, match="trained with 4 candidates but the game has 3"):
        policy(observations["receiver_0"], "receiver_0")
    lenient = AgentPolicy.from_checkpoint(run_dir, strict=False)
    lenient.check_env(fewer)
    assert lenient(observations["receiver_0"], "receiver_0") in range(3)

    with pytest.raises(ValueError, match="uint8 image"):
        policy({"image": np.zeros((16, 16, 3), np.float32), "phase": 0}, "sender_0")
    with pytest.raises(ValueError, match="no 'sketch'"):
        policy({"image": np.zeros((16, 16, 3), np.uint8), "phase": 1}, "receiver_0")
    with pytest.raises(ValueError, match="needs a sender, a receiver"):
        AgentPolicy()
