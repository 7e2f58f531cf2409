"""People as players: the pygame window of render mode ``"human"`` and the human policies.

pygame is imported only when a window first opens, so ``import sketchenv`` never loads it.
pygame drives a single display per process, so every :class:`GameWindow` is a handle on
that one window: the env's window and a human policy's window are the same picture, and
the display closes when the last handle does.

What a person sees is guarded: with a human receiver the sender's image (the target in
the ``original`` game) stays hidden until the choice is made, a human sender never sees
the candidates before sending, and ``feedback=False`` hides the right answer and the score.

A human sender draws freehand: each drag's pointer path becomes strokes of the game's
stroke format through small pure functions (`simplify_path`, `fit_bezier`,
`path_to_strokes`, `pad_strokes`), which the web study uses too.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sketchenv.strokes import StrokeFormat

__all__ = [
    "GameWindow",
    "HumanReceiver",
    "HumanSender",
    "Layout",
    "PlayerQuit",
    "fit_bezier",
    "from_canvas",
    "pad_strokes",
    "path_to_strokes",
    "simplify_path",
    "to_canvas",
]

WINDOW_SIZE = (1200, 720)
STATUS_HEIGHT = 64
MARGIN = 20
TITLE_HEIGHT = 26

BACKGROUND = (236, 236, 236)
PANEL = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
STATUS_BG = (40, 44, 52)
STATUS_INK = (240, 240, 240)
HOVER = (255, 190, 0)
RIGHT = (30, 160, 60)
WRONG = (210, 40, 40)
NEUTRAL = (40, 100, 220)
TRACE = (150, 190, 240)  # the raw pointer path of the drag in progress


class PlayerQuit(Exception):
    """The player pressed Esc or closed the window."""


def _pygame():
    """Import pygame on first use, with a clear message when it is missing."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(
            "the human window needs pygame: pip install 'sketchenv[human]' (or pygame>=2.5)"
        ) from error
    return pygame


@dataclass
class Layout:
    """Where things are drawn, in window pixels ``(x, y, w, h)`` (e.g. for clicks in tests)."""

    main: tuple[int, int, int, int] | None = None  # the big picture: sketch, or sender image
    canvas: tuple[int, int, int, int] | None = None  # the sender's drawing canvas
    sender_image: tuple[int, int, int, int] | None = None  # small sender image (spectator)
    candidates: list[tuple[int, int, int, int]] = field(default_factory=list)


class _Display:
    """The process's one pygame display and what the person in front of it may see."""

    def __init__(self) -> None:
        self.surface = None
        self.clock = None
        self.fonts: dict[int, Any] = {}
        self.handles = 0
        self.state: dict | None = None  # last state shown (for the status line)
        self.humans: set[str] = set()  # roles played by a person: "sender", "receiver"
        self.feedback = True

    def open(self, size: tuple[int, int], caption: str) -> None:
        pg = _pygame()
        if self.surface is None:
            pg.display.init()
            pg.font.init()
            if pg.display.get_driver() != "dummy":  # fit the screen, leaving room for the frame
                screen_w, screen_h = pg.display.get_desktop_sizes()[0]
                size = (min(size[0], screen_w - 40), min(size[1], screen_h - 80))
            self.surface = pg.display.set_mode(size)
            pg.display.set_caption(caption)
            self.clock = pg.time.Clock()
        self.handles += 1

    def release(self) -> None:
        self.handles -= 1
        if self.handles <= 0 and self.surface is not None:
            pg = _pygame()
            pg.display.quit()
            pg.font.quit()
            self.surface, self.clock, self.fonts, self.handles = None, None, {}, 0

    def font(self, size: int):
        if size not in self.fonts:
            self.fonts[size] = _pygame().font.Font(None, size)
        return self.fonts[size]


_display = _Display()


def to_canvas(
    pos: Sequence[float], rect: Sequence[int], image_size: tuple[int, int]
) -> tuple[float, float]:
    """Window pixel ``pos`` inside ``rect`` showing an ``(H, W)`` image -> canvas ``(x, y)``.

    Image pixel centres sit on ``linspace(-1, 1, W)`` along x and ``linspace(-1, 1, H)``
    along y (the raster convention); points beyond the outer pixel centres clip to +-1.
    """
    height, width = image_size
    rx, ry, rw, rh = rect
    column = (pos[0] + 0.5 - rx) * width / rw - 0.5
    row = (pos[1] + 0.5 - ry) * height / rh - 0.5
    x = -1.0 + 2.0 * column / (width - 1)
    y = -1.0 + 2.0 * row / (height - 1)
    return float(np.clip(x, -1.0, 1.0)), float(np.clip(y, -1.0, 1.0))


def from_canvas(
    point: Sequence[float], rect: Sequence[int], image_size: tuple[int, int]
) -> tuple[float, float]:
    """Canvas ``(x, y)`` -> window pixel position inside ``rect`` (inverse of :func:`to_canvas`)."""
    height, width = image_size
    rx, ry, rw, rh = rect
    column = (point[0] + 1.0) * (width - 1) / 2.0
    row = (point[1] + 1.0) * (height - 1) / 2.0
    return rx + (column + 0.5) * rw / width - 0.5, ry + (row + 0.5) * rh / height - 0.5


def _fit(box: tuple[int, int, int, int], aspect: float) -> tuple[int, int, int, int]:
    """The largest rectangle of width/height ``aspect`` in ``box``, at its top, centred across."""
    x, y, w, h = box
    width = min(w, round(h * aspect))
    height = min(h, round(width / aspect))
    return x + (w - width) // 2, y, width, height


def _grid(box: tuple[int, int, int, int], n: int, aspect: float) -> list[tuple[int, int, int, int]]:
    """``n`` tiles of width/height ``aspect`` in rows filling ``box`` as well as possible."""
    x, y, w, h = box
    gap = 6 if n > 30 else 10
    best = (0, 1)
    for columns in range(1, n + 1):
        rows = math.ceil(n / columns)
        tile_w = min((w - gap * (columns - 1)) / columns, (h - gap * (rows - 1)) / rows * aspect)
        best = max(best, (tile_w, columns))
    tile_w, columns = best
    tile_w, tile_h = int(tile_w), int(tile_w / aspect)
    left = x + (w - columns * tile_w - gap * (columns - 1)) // 2
    return [
        (left + (i % columns) * (tile_w + gap), y + (i // columns) * (tile_h + gap), tile_w, tile_h)
        for i in range(n)
    ]


def _check_image(array: Any, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"{name} must be a uint8 array [H, W, 3] as the env gives it, "
            f"got dtype {array.dtype} shape {array.shape}"
        )
    if min(array.shape[:2]) < 2:
        raise ValueError(f"{name} must be at least 2x2 pixels, got shape {array.shape}")
    return array


def _inside(pos: Sequence[int], rect: Sequence[int]) -> bool:
    x, y, w, h = rect
    return x <= pos[0] < x + w and y <= pos[1] < y + h


class GameWindow:
    """A pygame window showing one game: the sketch large, numbered candidates, a status line.

    ``show(state)`` draws an env ``render_state()`` dict (optionally with an ``"n_games"``
    key for "game 3 of 30"); ``choose`` and ``draw`` are the interactive views used by
    :class:`HumanReceiver` and :class:`HumanSender`. Esc or closing the window raises
    :class:`PlayerQuit` from any of them. Nothing is initialised until the first call.
    """

    def __init__(
        self,
        size: tuple[int, int] = WINDOW_SIZE,
        *,
        feedback: bool | None = None,
        fps: int = 30,
        outcome_seconds: float = 1.5,
        caption: str = "sketchenv",
    ) -> None:
        if len(size) != 2 or min(size) < 320:
            raise ValueError(f"window size must be (width, height), both >= 320; got {size}")
        self.requested_size = (int(size[0]), int(size[1]))
        self.fps = fps
        self.outcome_seconds = outcome_seconds
        self.caption = caption
        self.layout = Layout()
        self._open = False
        if feedback is not None:
            _display.feedback = bool(feedback)

    # -- the shared display -------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """The window's size in pixels: as requested, or as opened (fitted to the screen)."""
        if _display.surface is not None:
            return _display.surface.get_size()
        return self.requested_size

    @property
    def feedback(self) -> bool:
        """Whether the person sees the right answer and the score after each game."""
        return _display.feedback

    @feedback.setter
    def feedback(self, value: bool) -> None:
        _display.feedback = bool(value)

    def add_player(self, role: str) -> None:
        """Note that a person plays ``role`` ("sender" or "receiver") so nothing leaks to them."""
        if role not in ("sender", "receiver"):
            raise ValueError(f"role must be 'sender' or 'receiver', got {role!r}")
        _display.humans.add(role)

    def remove_player(self, role: str) -> None:
        """Note that ``role`` is no longer played by a person."""
        _display.humans.discard(role)

    @property
    def surface(self):
        """The pygame surface of the window (opens it); e.g. for ``pygame.image.save``."""
        self._ensure_open()
        return _display.surface

    def save(self, path: str) -> None:
        """Save what the window shows now as an image file (PNG, BMP, ...)."""
        _pygame().image.save(self.surface, path)

    def close(self) -> None:
        """Release this handle; the display closes when no handle uses it any more."""
        if self._open:
            self._open = False
            _display.release()

    def _ensure_open(self) -> None:
        if not self._open:
            _display.open(self.size, self.caption)
            self._open = True

    def _events(self) -> list:
        """Pending pygame events; raises PlayerQuit on Esc or a window close."""
        pg = _pygame()
        events = pg.event.get()
        for event in events:
            if event.type == pg.QUIT or (event.type == pg.KEYDOWN and event.key == pg.K_ESCAPE):
                raise PlayerQuit("the player quit (Esc or window closed)")
        return events

    def _flip(self) -> None:
        _pygame().display.flip()
        _display.clock.tick(self.fps)

    # -- layouts (pure geometry, so tests know where to click) ---------------------------
    def receiver_layout(
        self, image_size: tuple[int, int], n_candidates: int, *, sender_image: bool = False
    ) -> Layout:
        """Where the sketch (and optionally the sender's image) and the candidates go."""
        aspect = image_size[1] / image_size[0]
        left_w = min(420, self.size[0] // 3)
        body_y = STATUS_HEIGHT + 12
        body_h = self.size[1] - body_y - MARGIN
        main_h = body_h * 2 // 3 if sender_image else body_h
        layout = Layout(main=_fit(_below_title((MARGIN, body_y, left_w, main_h)), aspect))
        if sender_image:
            box = (MARGIN, body_y + main_h + 8, left_w, body_h - main_h - 8)
            layout.sender_image = _fit(_below_title(box), aspect)
        right_x = 2 * MARGIN + left_w
        box = (right_x, body_y, self.size[0] - right_x - MARGIN, body_h)
        layout.candidates = _grid(_below_title(box), n_candidates, aspect)
        return layout

    def sender_layout(self, image_size: tuple[int, int]) -> Layout:
        """Where the sender's image and the drawing canvas go (side by side, same size)."""
        aspect = image_size[1] / image_size[0]
        body_y = STATUS_HEIGHT + 12
        half = (self.size[0] - 3 * MARGIN) // 2
        height = self.size[1] - body_y - MARGIN
        return Layout(
            main=_fit(_below_title((MARGIN, body_y, half, height)), aspect),
            canvas=_fit(_below_title((2 * MARGIN + half, body_y, half, height)), aspect),
        )

    # -- drawing helpers ----------------------------------------------------------------
    def _text(self, text: str, pos: tuple[int, int], size: int = 24, color=INK) -> None:
        _display.surface.blit(_display.font(size).render(text, True, color), pos)

    def _title(self, text: str, rect: tuple[int, int, int, int]) -> None:
        self._text(text, (rect[0], rect[1] - TITLE_HEIGHT), 24, MUTED)

    def _image(self, array: np.ndarray, rect: tuple[int, int, int, int]) -> None:
        pg = _pygame()
        height, width = array.shape[:2]
        picture = pg.image.frombuffer(np.ascontiguousarray(array).tobytes(), (width, height), "RGB")
        _display.surface.blit(pg.transform.smoothscale(picture, rect[2:]), rect[:2])

    def _frame(self, rect, color, width: int = 4) -> None:
        x, y, w, h = rect
        outer = (x - width, y - width, w + 2 * width, h + 2 * width)
        _pygame().draw.rect(_display.surface, color, outer, width)

    def _status(self, title: str, hint: str) -> None:
        _display.surface.fill(BACKGROUND)
        _pygame().draw.rect(_display.surface, STATUS_BG, (0, 0, self.size[0], STATUS_HEIGHT))
        self._text(title, (MARGIN, 10), 30, STATUS_INK)
        self._text(hint, (MARGIN, 38), 22, (190, 200, 210))

    def _score_text(self, state: dict | None, decided: bool = False) -> str:
        if state is None:
            return ""
        game = int(state.get("episode", 0)) + 1
        text = f"Game {game}"
        if state.get("n_games"):
            text += f" of {state['n_games']}"
        if self.feedback:
            played = game if decided else game - 1
            text += f"   ·   score {int(state.get('wins', 0))}/{played}"
        return text

    def _candidates(self, candidates: Sequence[np.ndarray], marks: dict[int, tuple]) -> None:
        """Candidate tiles numbered from 0 (as the env's action, the log and the study
        database count them), coloured frames from ``marks``."""
        pg = _pygame()
        tiles = self.layout.candidates
        label_size = 18 if len(candidates) > 30 else 24
        self._title("Candidates", tiles[0])
        for index, (image, tile) in enumerate(zip(candidates, tiles, strict=True)):
            self._image(image, tile)
            label = _display.font(label_size).render(str(index), True, STATUS_INK)
            badge = pg.Rect(tile[0], tile[1], label.get_width() + 6, label.get_height() + 2)
            pg.draw.rect(_display.surface, STATUS_BG, badge)
            _display.surface.blit(label, (badge.x + 3, badge.y + 1))
        for index, color in marks.items():
            self._frame(tiles[index], color, 4 if len(candidates) > 30 else 5)

    def _game_view(self, state: dict, title: str, hint: str, *, receiver_view=False) -> None:
        """Draw a state as the person in front of the window may see it."""
        self._status(title, hint)
        choice, target = state.get("choice"), state.get("target")
        decided = choice is not None
        humans = _display.humans
        if state.get("phase", 0) == 0 and not decided and humans:
            self.layout = Layout()
            self._text("The sender is drawing…", (MARGIN, STATUS_HEIGHT + 40), 36, MUTED)
            return
        candidates = [_check_image(c, "candidate") for c in state["candidates"]]
        show_sender = (  # the sender's image gives the answer away in the original game
            not receiver_view and ("receiver" not in humans or decided) and self.feedback
        )
        sketch = state.get("sketch")
        sender_image = state.get("sender_image") if show_sender else None
        main, small = (sketch, sender_image) if sketch is not None else (sender_image, None)
        self.layout = self.receiver_layout(
            candidates[0].shape[:2], len(candidates), sender_image=small is not None
        )
        if main is not None:
            self._title("Sketch" if sketch is not None else "Sender's image", self.layout.main)
            self._image(_check_image(main, "sketch"), self.layout.main)
            self._frame(self.layout.main, MUTED, 1)
        if small is not None:
            self._title("Sender's image", self.layout.sender_image)
            self._image(_check_image(small, "sender_image"), self.layout.sender_image)
        marks: dict[int, tuple] = {}
        if decided and self.feedback and target is not None:
            marks[int(target)] = RIGHT
            if int(choice) != int(target):
                marks[int(choice)] = WRONG
        elif decided:
            marks[int(choice)] = NEUTRAL
        self._candidates(candidates, marks)

    def _outcome_text(self, state: dict) -> str:
        choice, target = state.get("choice"), state.get("target")
        if not self.feedback or target is None:
            return f"Answer recorded: image {int(choice) + 1}."
        if int(choice) == int(target):
            return f"Correct! Image {int(target) + 1} was the target."
        return (
            f"Not this time: image {int(choice) + 1} was picked, the target was {int(target) + 1}."
        )

    # -- public views -------------------------------------------------------------------
    def show(self, state: dict, *, wait: bool = False) -> None:
        """Draw an env ``render_state()``; after the choice, mark the target (with feedback).

        Without ``wait`` the call returns at once, except that an outcome stays up to
        ``outcome_seconds`` on a real screen (a key or click skips it). With ``wait`` it
        blocks until the person presses a key or clicks. Input given while a state is
        shown is dropped, so a stray click never answers the next game.
        """
        pg = _pygame()
        self._ensure_open()
        _display.state = state
        decided = state.get("choice") is not None
        if decided:
            title = self._outcome_text(state)
        elif state.get("phase", 0) == 0:
            title = "The sender is drawing"
        else:
            title = "The receiver is choosing"
        hint = self._score_text(state, decided)
        if wait:
            hint += "   ·   press a key or click to continue"
        self._game_view(state, title, hint + "   ·   Esc quits")
        self._flip()
        self._events()
        holding = decided and pg.display.get_driver() != "dummy"
        until = time.monotonic() + (self.outcome_seconds if holding else 0.0)
        while wait or time.monotonic() < until:
            if any(e.type in (pg.KEYDOWN, pg.MOUSEBUTTONDOWN) for e in self._events()):
                return
            self._flip()

    def message(self, title: str, lines: Sequence[str] = (), *, wait: bool = True) -> None:
        """A text screen (instructions, "next game", "thank you"); waits for a key or click."""
        pg = _pygame()
        self._ensure_open()
        self._status(title, "press a key or click to continue   ·   Esc quits" if wait else "")
        self.layout = Layout()
        for number, line in enumerate(lines):
            self._text(line, (MARGIN * 2, STATUS_HEIGHT + 40 + 38 * number), 30)
        self._flip()
        self._events()  # input given before the screen appeared is dropped
        while wait:
            if any(e.type in (pg.KEYDOWN, pg.MOUSEBUTTONDOWN) for e in self._events()):
                return
            self._flip()

    def choose(self, sketch: np.ndarray, candidates: Sequence[np.ndarray]) -> int:
        """Show the sketch and the numbered candidates; return the index the person picks.

        A left click picks a candidate; typing its number (as shown, from 0) picks it as
        soon as no longer number is possible, or on Enter. Backspace edits the number.
        """
        pg = _pygame()
        state = {
            "sketch": _check_image(sketch, "sketch"),
            "candidates": [_check_image(c, f"candidate_{i}") for i, c in enumerate(candidates)],
            "phase": 1,
        }
        n = len(state["candidates"])
        if n == 0:
            raise ValueError("choose() needs at least one candidate")
        self._ensure_open()
        score = self._score_text(_display.state)
        hint = "Click it, or type its number (Enter confirms)   ·   Esc quits"
        typed = ""
        while True:
            status = f"{score}   ·   typed: {typed}_" if typed else score
            self._game_view(state, f"Which image is it?   {status}", hint, receiver_view=True)
            for tile in self.layout.candidates:
                if _inside(pg.mouse.get_pos(), tile):
                    self._frame(tile, HOVER, 3)
            self._flip()
            for event in self._events():
                if event.type == pg.MOUSEBUTTONDOWN and event.button == 1:
                    for index, tile in enumerate(self.layout.candidates):
                        if _inside(event.pos, tile):
                            return index
                elif event.type == pg.KEYDOWN:
                    digit = _digit(pg, event)
                    if digit is not None:
                        typed += str(digit)
                    elif event.key == pg.K_BACKSPACE:
                        typed = typed[:-1]
                    elif event.key in (pg.K_RETURN, pg.K_KP_ENTER) and typed:
                        return int(typed)
                    if typed and int(typed) >= n:
                        typed = ""  # no such image: start again
                    elif typed == "0" or (typed and int(typed) * 10 >= n):
                        return int(typed)  # no longer number is possible

    def draw(
        self,
        image: np.ndarray,
        n_lines: int,
        *,
        sigma2: float = 5e-4,
        stroke_format: StrokeFormat | str = "line",
        tolerance: float | None = None,
    ) -> np.ndarray:
        """Show ``image`` and a blank canvas; return the strokes the person draws freehand.

        Each drag records the pointer's path and becomes strokes of ``stroke_format`` (see
        :func:`path_to_strokes`): a polyline of lines, simplified to within ``tolerance``
        canvas units (default one image pixel) and to the strokes left, or one Bézier curve
        fitted to the path; a click is a dot. The preview shows the strokes as they will be
        sent. Backspace, Ctrl-Z or a right click undoes the last drag (all its strokes);
        Enter sends. Returns float32 ``[n_lines, stroke_format.size]`` (see
        :func:`pad_strokes` for the strokes not drawn).
        """
        pg = _pygame()
        image = _check_image(image, "image")
        stroke_format = StrokeFormat.parse(stroke_format)
        if int(n_lines) < 1:
            raise ValueError(f"n_lines must be >= 1, got {n_lines}")
        self._ensure_open()
        size = image.shape[:2]
        if tolerance is None:
            tolerance = 2 / (max(size) - 1)  # one image pixel: finer detail is not drawn
        canvas = self.sender_layout(size).canvas
        drags: list[np.ndarray] = []  # the strokes of each finished drag
        path: list[tuple[float, float]] | None = None  # the drag in progress, canvas units
        noun = "lines" if stroke_format.primitive == "line" else "curves"
        message = ""
        score = self._score_text(_display.state)
        hint = "Drag to draw   ·   undo: Backspace, Ctrl-Z or right click   ·   Enter sends   ·   Esc quits"

        def used() -> int:
            return sum(len(strokes) for strokes in drags)

        def fitted() -> np.ndarray:
            return path_to_strokes(path, stroke_format, tolerance, max_strokes=n_lines - used())

        preview, fitted_points = None, 0  # the drag in progress as it would be sent
        while True:
            if path and len(path) != fitted_points:  # fit again only when the path grew
                preview, fitted_points = fitted(), len(path)
            title = f"Draw this image: {used()}/{n_lines} {noun}   {score}"
            self._sender_view(
                image, drags, path, preview, stroke_format, title, message or hint, sigma2
            )
            self._flip()
            for event in self._events():
                if event.type == pg.MOUSEBUTTONDOWN and event.button == 1:
                    if used() >= n_lines:
                        message = f"All {n_lines} {noun} used: undo one or press Enter to send."
                    elif _inside(event.pos, canvas):
                        path, fitted_points = [to_canvas(event.pos, canvas, size)], 0
                elif event.type == pg.MOUSEMOTION and path:
                    path.append(to_canvas(event.pos, canvas, size))
                elif event.type == pg.MOUSEBUTTONUP and event.button == 1 and path:
                    path.append(to_canvas(event.pos, canvas, size))
                    drags.append(fitted())
                    path, message = None, ""
                elif event.type == pg.MOUSEBUTTONDOWN and event.button == 3:
                    drags, path = drags[:-1], None
                elif event.type == pg.KEYDOWN:
                    undo = event.key == pg.K_z and event.mod & (pg.KMOD_CTRL | pg.KMOD_META)
                    if event.key == pg.K_BACKSPACE or undo:
                        drags, path = drags[:-1], None
                    elif event.key in (pg.K_RETURN, pg.K_KP_ENTER):
                        if drags:
                            return pad_strokes(np.concatenate(drags), n_lines, stroke_format)
                        message = "Draw at least one stroke before sending."

    def _sender_view(
        self, image, drags, path, preview, stroke_format, title: str, hint: str, sigma2: float
    ) -> None:
        pg = _pygame()
        surface = _display.surface
        self._status(title, hint)
        self.layout = self.sender_layout(image.shape[:2])
        picture, canvas = self.layout.main, self.layout.canvas
        self._title("Your image", picture)
        self._image(image, picture)
        self._title("Your sketch", canvas)
        pg.draw.rect(surface, PANEL, canvas)
        self._frame(canvas, MUTED, 1)
        size = image.shape[:2]
        # the rasteriser's line is about 2 * sigma * sqrt(ln 2) wide in canvas units
        pixel = canvas[2] / size[1] * (size[1] - 1) / 2  # window pixels per canvas unit
        width = max(2, round(2 * math.sqrt(sigma2 * math.log(2)) * pixel))
        surface.set_clip(pg.Rect(canvas))
        groups = [(strokes, INK) for strokes in drags]
        if path:
            window_path = [from_canvas(point, canvas, size) for point in path]
            if len(window_path) > 1:
                pg.draw.lines(surface, TRACE, False, window_path, 1)
            groups.append((preview, MUTED))
        for strokes, color in groups:
            for stroke in strokes:
                points = _curve_points(stroke[: 2 * stroke_format.n_points].reshape(-1, 2))
                _polyline(surface, color, [from_canvas(p, canvas, size) for p in points], width)
        surface.set_clip(None)


def _polyline(surface, color, points: list, width: int) -> None:
    """A round-jointed polyline (a dot for one point) ``width`` window pixels wide."""
    pg = _pygame()
    if len(points) > 1:
        pg.draw.lines(surface, color, False, points, width)
    for point in points:
        pg.draw.circle(surface, color, point, width / 2)


def _curve_points(control: np.ndarray, samples: int = 32) -> np.ndarray:
    """Points along the Bézier curve of ``control`` (a line's two points as they are)."""
    if len(control) == 2:
        return control
    return _bernstein(np.linspace(0.0, 1.0, samples), len(control) - 1) @ control


def _below_title(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x, y, w, h = box
    return x, y + TITLE_HEIGHT, w, h - TITLE_HEIGHT


def _digit(pg, event) -> int | None:
    """The digit a KEYDOWN event typed (main row or keypad), else None."""
    for digit in range(10):
        if event.key in (getattr(pg, f"K_{digit}"), getattr(pg, f"K_KP{digit}")):
            return digit
    return None


# -- from a pointer path to strokes (pure numpy, no pygame) --------------------------------
def simplify_path(
    points: Sequence[Sequence[float]], tolerance: float, max_points: int | None = None
) -> np.ndarray:
    """Ramer–Douglas–Peucker: the path's points ``[k, 2]`` (its ends always) whose polyline
    stays within ``tolerance`` of every point, keeping at most ``max_points`` (>= 2).

    The farthest point of the worst chord is added first, so with no cap this is plain
    RDP, and a cap keeps the points that matter most; a click (one point) gives it twice.
    """
    path = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(path) == 0:
        raise ValueError("a path needs at least one point")
    if max_points is not None and max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    if len(path) == 1:
        return np.repeat(path, 2, axis=0)
    kept = [0, len(path) - 1]
    while max_points is None or len(kept) < max_points:
        worst, split = tolerance, None
        for left, right in itertools.pairwise(kept):
            if right - left < 2:
                continue
            distance = _segment_distance(path[left + 1 : right], path[left], path[right])
            if distance.max() > worst:
                worst, split = distance.max(), left + 1 + int(distance.argmax())
        if split is None:
            break
        kept = sorted([*kept, split])
    return path[kept]


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each point's distance to the segment ``a``-``b`` (to ``a`` when they coincide)."""
    chord = b - a
    length2 = float(chord @ chord)
    t = np.clip((points - a) @ chord / length2, 0.0, 1.0) if length2 > 0 else 0.0
    return np.linalg.norm(points - (a + np.multiply.outer(t, chord)), axis=-1)


def _bernstein(t: np.ndarray, degree: int) -> np.ndarray:
    """Bernstein basis ``[len(t), degree + 1]``."""
    j = np.arange(degree + 1)
    binomial = np.array([math.comb(degree, i) for i in j], dtype=float)
    t = np.asarray(t, dtype=float)[:, None]
    return binomial * t**j * (1 - t) ** (degree - j)


def fit_bezier(points: Sequence[Sequence[float]], degree: int, iterations: int = 200) -> np.ndarray:
    """The Bézier curve's control points ``[degree + 1, 2]`` closest to the path in least
    squares, its ends fixed on the path's ends.

    Parameters start at chord length and are refined by Newton steps (Schneider's fitting
    without the splitting), so points sampled from a Bézier curve give it back. A path of
    fewer distinct points than control points (a click, a short drag) gives its chord,
    the controls evenly along it (all points equal for a click).
    """
    if degree < 2:
        raise ValueError(f"fit_bezier fits curves of degree >= 2, got {degree}")
    path = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(path) == 0:
        raise ValueError("a path needs at least one point")
    path = path[np.r_[True, (np.diff(path, axis=0) != 0).any(axis=1)]]  # no repeats
    first, last = path[0], path[-1]
    chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))]
    if len(path) < degree + 1 or chord[-1] == 0:
        return first + np.linspace(0.0, 1.0, degree + 1)[:, None] * (last - first)
    t = chord / chord[-1]

    def solve(t: np.ndarray) -> np.ndarray:
        basis = _bernstein(t, degree)
        rest = path - np.outer(basis[:, 0], first) - np.outer(basis[:, -1], last)
        inner = np.linalg.lstsq(basis[:, 1:-1], rest, rcond=None)[0]
        return np.vstack([first, inner, last])

    for _ in range(iterations):
        control = solve(t)
        residual = _bernstein(t, degree) @ control - path
        speed = degree * _bernstein(t, degree - 1) @ np.diff(control, axis=0)
        bend = degree * (degree - 1) * _bernstein(t, degree - 2) @ np.diff(control, 2, axis=0)
        slope = (speed * speed).sum(1) + (residual * bend).sum(1)
        step = (residual * speed).sum(1) / np.where(slope > 1e-12, slope, np.inf)
        refined = np.clip(t - step, 0.0, 1.0)
        refined[0], refined[-1] = 0.0, 1.0
        done = np.abs(refined - t).max() < 1e-12
        t = refined
        if done:
            break
    return solve(t)


def _styled(points: np.ndarray, stroke_format: StrokeFormat, opacity: float = 1.0) -> np.ndarray:
    """Rows ``[n, size]``: control points ``[n, 2 * n_points]`` then the options a
    person's stroke has (width 1, the given opacity, black)."""
    options = [1.0] * stroke_format.width + [opacity] * stroke_format.opacity
    options += [0.0, 0.0, 0.0] * stroke_format.colour
    return np.hstack([points, np.tile(options, (len(points), 1))])


def path_to_strokes(
    points: Sequence[Sequence[float]],
    stroke_format: StrokeFormat | str = "line",
    tolerance: float = 0.03,
    max_strokes: int | None = None,
) -> np.ndarray:
    """One drag's path (canvas ``(x, y)`` points) -> its strokes ``[k, size]`` (float64).

    ``line``: the segments of the path simplified within ``tolerance`` (`simplify_path`),
    simplified further to at most ``max_strokes`` segments; a straight drag is one line,
    a click a dot. A curve: one Bézier curve fitted to the path (`fit_bezier`), its
    control points clipped to the canvas. Options: width 1, opacity 1, black.
    """
    stroke_format = StrokeFormat.parse(stroke_format)
    if stroke_format.primitive == "line":
        cap = None if max_strokes is None else max_strokes + 1
        kept = simplify_path(points, tolerance, cap)
        control = np.hstack([kept[:-1], kept[1:]])
    else:
        fitted = fit_bezier(points, stroke_format.n_points - 1)
        control = np.clip(fitted, -1.0, 1.0).reshape(1, -1)
    return _styled(control, stroke_format)


def pad_strokes(
    strokes: Sequence[Sequence[float]], n_lines: int, stroke_format: StrokeFormat | str = "line"
) -> np.ndarray:
    """``n_lines`` strokes ``[n_lines, size]`` (float32): those a person drew, then padding.

    With ``opacity`` in the format the padding has opacity 0 (left out); otherwise it is
    zero-length dots on the first stroke's start, where the rasteriser already draws that
    stroke's round end, so they add (almost) nothing to the sketch.
    """
    stroke_format = StrokeFormat.parse(stroke_format)
    drawn = np.asarray(strokes, dtype=float).reshape(-1, stroke_format.size)
    if not 1 <= len(drawn) <= n_lines:
        raise ValueError(f"pad_strokes takes 1 to {n_lines} strokes, got {len(drawn)}")
    dot = np.tile(drawn[0, :2], (n_lines - len(drawn), stroke_format.n_points))
    padding = _styled(dot, stroke_format, opacity=0.0)
    return np.vstack([drawn, padding]).astype(np.float32)


class HumanReceiver:
    """A person as ``receiver_0``: ``policy(observation, agent) -> candidate index``.

    Uses ``window`` (or a window of its own; all windows share the one display, so a
    human receiver on a ``render_mode="human"`` env plays in the env's window).
    """

    def __init__(self, window: GameWindow | None = None, *, feedback: bool | None = None) -> None:
        self.window = window if window is not None else GameWindow(feedback=feedback)
        if feedback is not None:
            self.window.feedback = feedback
        self.window.add_player("receiver")

    def __call__(self, observation: dict, agent: str = "receiver_0") -> int:
        if not isinstance(observation, dict) or "sketch" not in observation:
            raise ValueError(
                "HumanReceiver expects the receiver's observation dict with 'sketch' and "
                f"'candidate_0', 'candidate_1', ...; got {type(observation).__name__}"
            )
        if int(observation.get("phase", 1)) != 1:
            return 0  # the sender's turn: the env ignores the receiver's action
        n = sum(1 for key in observation if key.startswith("candidate_"))
        candidates = [observation[f"candidate_{i}"] for i in range(n)]
        return self.window.choose(observation["sketch"], candidates)

    def close(self) -> None:
        """Release the window."""
        self.window.remove_player("receiver")
        self.window.close()


class HumanSender:
    """A person as ``sender_0``: sees the image, draws up to ``n_lines`` strokes, Enter sends.

    ``n_lines`` and ``stroke_format`` default to the env's (read from the last state the
    window showed, so pass them when the env does not render in ``"human"`` mode; a state
    without a format means lines). ``sigma2`` only sets the width of the lines in the
    preview; the env's rasteriser draws the real sketch.
    """

    def __init__(
        self,
        window: GameWindow | None = None,
        *,
        n_lines: int | None = None,
        stroke_format: StrokeFormat | str | None = None,
        sigma2: float = 5e-4,
        feedback: bool | None = None,
    ) -> None:
        if n_lines is not None and int(n_lines) < 1:
            raise ValueError(f"n_lines must be >= 1, got {n_lines}")
        self.window = window if window is not None else GameWindow(feedback=feedback)
        if feedback is not None:
            self.window.feedback = feedback
        self.window.add_player("sender")
        self.n_lines = n_lines
        self.stroke_format = None if stroke_format is None else StrokeFormat.parse(stroke_format)
        self.sigma2 = sigma2

    def _lines(self) -> int:
        if self.n_lines is not None:
            return int(self.n_lines)
        if _display.state is not None and "n_lines" in _display.state:
            return int(_display.state["n_lines"])
        raise ValueError(
            "HumanSender does not know n_lines: pass HumanSender(n_lines=...) or use it "
            "with an env created with render_mode='human'"
        )

    def _format(self) -> StrokeFormat:
        if self.stroke_format is not None:
            return self.stroke_format
        state = _display.state or {}
        return StrokeFormat.parse(state.get("stroke_format", "line"))

    def __call__(self, observation: dict, agent: str = "sender_0") -> np.ndarray:
        if not isinstance(observation, dict) or "image" not in observation:
            raise ValueError(
                "HumanSender expects the sender's observation dict with 'image' and 'phase'; "
                f"got {type(observation).__name__}"
            )
        n_lines, stroke_format = self._lines(), self._format()
        if int(observation.get("phase", 0)) != 0:  # the receiver's turn: any valid action
            low, _ = stroke_format.bounds()
            return np.tile(np.maximum(low, 0.0), (n_lines, 1))
        return self.window.draw(
            observation["image"], n_lines, sigma2=self.sigma2, stroke_format=stroke_format
        )

    def close(self) -> None:
        """Release the window."""
        self.window.remove_player("sender")
        self.window.close()
