"""sketchenv: emergent communication through sketching, as a PettingZoo env and a torch core.

`sketchenv.parallel_env(...)` and `sketchenv.env(...)` give the game to any policy,
`sketchenv.vector_env(num_envs, ...)` N games at once for reinforcement learning;
`sketchenv.game.SketchGame` is the batched, differentiable core the self-play trainer uses;
`sketchenv.StrokeFormat` says what a stroke is (lines, Bézier curves, width, opacity, colour)
and `sketchenv.strokes_to_svg` writes a sketch's strokes as SVG.
"""

import pettingzoo

from sketchenv.env import SketchParallelEnv, env, parallel_env, raw_env
from sketchenv.game import GAMES, GameBatch, SketchGame
from sketchenv.strokes import StrokeFormat, strokes_to_svg
from sketchenv.vector import SketchVectorEnv, vector_env

__all__ = [
    "GAMES",
    "GameBatch",
    "SketchGame",
    "SketchParallelEnv",
    "SketchVectorEnv",
    "StrokeFormat",
    "env",
    "parallel_env",
    "raw_env",
    "strokes_to_svg",
    "vector_env",
]

if hasattr(pettingzoo, "register"):  # PettingZoo >= 1.26 has a registry of env ids
    pettingzoo.register("parallel", "sketchenv/Sketch-v0", entry_point="sketchenv.env:parallel_env")
    pettingzoo.register("aec", "sketchenv/Sketch-v0", entry_point="sketchenv.env:env")
