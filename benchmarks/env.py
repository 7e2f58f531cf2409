"""Speed of the game: episodes/s through the PettingZoo API, the vectorised env and the core.

Paper settings: the original game with 99 distractors, 20 random strokes, 64 px `shapes`.
Both paths use the same `SketchGame` (images preloaded into its 8-bit cache, as after one
epoch); the table prints games per second side by side and their ratio to the env.

    nice -n 10 python benchmarks/env.py [--episodes 200] [--blocks 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import sketchenv


def rate(n_games: int, seconds: float) -> float:
    return n_games / max(seconds, 1e-9)


def env_episodes(env, n_episodes: int) -> float:
    """Random policies through the parallel API; returns episodes (= games) per second."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(n_episodes):
        env.reset()
        strokes = rng.uniform(-1, 1, env.action_space("sender_0").shape).astype(np.float32)
        env.step({"sender_0": strokes})
        env.step({"receiver_0": int(rng.integers(env.n_candidates))})
    return rate(n_episodes, time.perf_counter() - start)


def vector_games(env, n_steps: int) -> float:
    """Random policies through the vectorised env: games (= N per two steps) per second."""
    rng = np.random.default_rng(0)
    n, c = env.num_envs, env.n_candidates
    shape = env.action_space("sender_0").shape
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(n_steps):
        env.step({"sender_0": rng.uniform(-1, 1, shape).astype(np.float32)})
        env.step({"receiver_0": rng.integers(c, size=n)})
    return rate(n_steps * n, time.perf_counter() - start)


def core_games(game, n_blocks: int, *, render: bool, backward: bool = False) -> float:
    """Blocks of games through the core (sample, optionally render, choose, score)."""
    g = torch.Generator().manual_seed(0)
    n, c = game.n_lines, game.n_candidates
    start = time.perf_counter()
    for _ in range(n_blocks):
        batch = game.sample(1, g)
        if render:
            strokes = (torch.rand(1, c, n, 4, generator=g) * 2 - 1).requires_grad_(backward)
            sketches = game.render(strokes)
            if backward:
                sketches.mean().backward()
        scores = torch.rand(1, c, c, generator=g)
        game.score(game.choose(scores), batch)
    return rate(n_blocks * c, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200, help="env episodes to time")
    parser.add_argument("--blocks", type=int, default=20, help="core blocks of 100 games to time")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-envs", type=int, default=64, help="games per vector-env step")
    parser.add_argument("--vector-steps", type=int, default=20, help="vector-env games to time")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    env = sketchenv.parallel_env(game="original", image_size=args.image_size, n_lines=20, seed=0)
    game = env.core
    cold = env_episodes(env, 10)
    start = time.perf_counter()
    game.preload()
    preload_s = time.perf_counter() - start
    env_episodes(env, 5)  # warm-up
    vectors = {  # the default (new arrays every step) and copy=False (buffers reused)
        copy: sketchenv.vector_env(
            args.num_envs, game="original", image_size=args.image_size, n_lines=20, copy=copy
        )
        for copy in (True, False)
    }
    for vector in vectors.values():
        vector.core.preload()
        vector_games(vector, 2)  # warm-up
    rows = [
        ("PettingZoo parallel API, random policies", env_episodes(env, args.episodes)),
        *(
            (f"vector env, {args.num_envs} a step, copy={copy}", vector_games(v, args.vector_steps))
            for copy, v in vectors.items()
        ),
        ("core: sample + choose + score", core_games(game, args.blocks, render=False)),
        ("core: + render sketches (forward)", core_games(game, args.blocks, render=True)),
        ("core: + render backward", core_games(game, args.blocks, render=True, backward=True)),
    ]
    print(
        f"original game, {game.n_distractors} distractors, {game.n_lines} strokes, "
        f"{game.image_size[0]} px shapes ({len(game.dataset)} images), "
        f"{torch.get_num_threads()} torch thread(s)"
    )
    print(
        f"preloading the dataset: {preload_s:.1f} s; env before preloading: {cold:.1f} episodes/s"
    )
    print(f"{'path':<44}{'games/s':>10}{'x env':>8}")
    for name, games_per_s in rows:
        print(f"{name:<44}{games_per_s:>10.1f}{games_per_s / rows[0][1]:>8.1f}")


if __name__ == "__main__":
    main()
