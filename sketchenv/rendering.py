"""The `rgb_array` picture of a game: sender image, sketch and candidates in one frame.

The spectator's view (the default) shows everything, the sender's image included, so it
is for watching and recording games, not for showing a receiver; the receiver's view
(``view="receiver"``) leaves the sender's image out. Top row: the sender's image (blue
frame; a background tile in the receiver's view) and the sketch (grey frame; an empty
grey tile before the sender has drawn). Below: the candidates in a near-square grid, in index order
(row by row). After the receiver's choice, the target gets a green frame and a wrong pick
a red one, and the bar along the top turns green (win) or red (loss).
"""

from __future__ import annotations

import math

import numpy as np

MIN_TILE = 64  # small images are enlarged (nearest neighbour) to at least this many pixels
BORDER = 3
GAP = 4
BAR = 6

BACKGROUND = (48, 48, 48)
NEUTRAL = (150, 150, 150)
SENDER = (40, 100, 220)
RIGHT = (30, 170, 60)
WRONG = (210, 40, 40)
PENDING = (90, 90, 90)


VIEWS = ("spectator", "receiver")


def compose_frame(state: dict, view: str = "spectator") -> np.ndarray:
    """An env `render_state()` dict -> one uint8 RGB picture `[height, width, 3]`;
    ``view="receiver"`` shows only what the receiver may see (no sender image)."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {list(VIEWS)}")
    sender = _image(state["sender_image"], "sender_image")
    candidates = np.asarray(state["candidates"])
    if candidates.ndim != 4 or candidates.shape[1:] != sender.shape or candidates.dtype != np.uint8:
        raise ValueError(
            f"candidates must be uint8 [C, {', '.join(map(str, sender.shape))}], "
            f"got {candidates.dtype} {list(candidates.shape)}"
        )
    sketch = state.get("sketch")
    sketch = np.full_like(sender, PENDING[0]) if sketch is None else _image(sketch, "sketch")
    choice, target = state.get("choice"), state.get("target")

    scale = max(1, math.ceil(MIN_TILE / max(sender.shape[:2])))
    tile_h, tile_w = sender.shape[0] * scale + 2 * BORDER, sender.shape[1] * scale + 2 * BORDER
    n = len(candidates)
    columns = max(2, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    width = columns * (tile_w + GAP) + GAP
    height = BAR + GAP + (1 + rows) * (tile_h + GAP) + GAP  # extra GAP separates the grid
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = BACKGROUND
    if choice is not None:
        frame[:BAR] = RIGHT if choice == target else WRONG

    top = BAR + GAP
    if view == "spectator":
        _paste(frame, _framed(sender, scale, SENDER), top, GAP)
    _paste(frame, _framed(sketch, scale, NEUTRAL), top, 2 * GAP + tile_w)
    grid_top = top + tile_h + 2 * GAP
    for i, candidate in enumerate(candidates):
        colour = NEUTRAL
        if choice is not None and i == target:
            colour = RIGHT
        elif choice is not None and i == choice:
            colour = WRONG
        row, column = divmod(i, columns)
        _paste(
            frame,
            _framed(candidate, scale, colour),
            grid_top + row * (tile_h + GAP),
            GAP + column * (tile_w + GAP),
        )
    return frame


def _image(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 [H, W, 3], got {array.dtype} {list(array.shape)}")
    return array


def _framed(image: np.ndarray, scale: int, colour: tuple[int, int, int]) -> np.ndarray:
    big = image.repeat(scale, axis=0).repeat(scale, axis=1)
    tile = np.empty((big.shape[0] + 2 * BORDER, big.shape[1] + 2 * BORDER, 3), np.uint8)
    tile[:] = colour
    tile[BORDER:-BORDER, BORDER:-BORDER] = big
    return tile


def _paste(frame: np.ndarray, tile: np.ndarray, top: int, left: int) -> None:
    frame[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
