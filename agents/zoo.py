"""Weights files shipped with sketchenv, by name, and the recipes that make them.

Each shipped name ``NAME`` is two files in ``agents/weights/``: ``NAME.toml``, the
``python -m train.pretrain`` config that made it (the recipe), and ``NAME.pt``, the
weights file. ``--weights NAME``, ``--perceptual-net NAME`` and ``--recogniser NAME``
take the name wherever a weights file is accepted, with no download and no pretraining
at run time. ``python -m train.pretrain --remake NAME`` re-makes a file from its recipe
(a test checks that every shipped file records exactly its recipe).
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"


def shipped() -> list[str]:
    """Names of the shipped weights files (those with a recipe)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.toml"))


def recipe_path(name: str) -> Path:
    """The recipe (``train.pretrain`` config file) of a shipped name."""
    if name not in shipped():
        raise ValueError(f"no shipped weights called {name!r}; shipped: {shipped()}")
    return WEIGHTS_DIR / f"{name}.toml"


def resolve_weights(spec: str) -> str | None:
    """The file behind ``spec``: a shipped name's ``.pt``, an existing file, else None."""
    if spec in shipped():
        path = WEIGHTS_DIR / f"{spec}.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"shipped weights {spec!r} are missing at {path}; re-make them with "
                f"python -m train.pretrain --remake {spec}"
            )
        return str(path)
    return spec if os.path.isfile(spec) else None
