"""A human study over HTTP: many participants at once, each with their own games.

:class:`WebStudy` is the study without the web: who has joined, which game each plays
next, what the page may see of it, and checking and recording an answer.

Honest by construction: what the page receives is built from the observation of the
participant's own role only (a receiver gets the sketch and the candidates, never the
sender's image or the target; a sender gets the image to draw), and the answer of a game
is revealed, with feedback on, only in the reply to that game's answer. Game ``i`` of a
participant is a pure function of ``(their seed, i)``, as in ``train.play``, so the server
keeps nothing in memory that a restart could lose: the study database is the whole state.
The web layer (Flask routes, waitress) is ``train.serve``.

Strokes follow the game's stroke format (``--stroke-format``). A sender's page draws
freehand and sends each drag's raw pointer path (``{"paths": [[[x, y], ...], ...]}``, canvas
units); the server turns the paths into strokes with the very functions of the pygame
window (``sketchenv.human.path_to_strokes``: a polyline of lines simplified within one
image pixel, or one least-squares Bézier curve per drag), so there is one implementation
of the fitting. Drag ``i`` is simplified to leave a stroke for each later drag, as the
window's "strokes left" does. The page previews lines with the same simplification
ported to JavaScript (the server's is the one recorded) and curves as the path drawn.
A client may instead send finished strokes (``{"strokes": [...]}``, rows of the format's
columns), checked against the format and padded as the window pads.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import sketchenv
from sketchenv.human import pad_strokes, path_to_strokes
from sketchenv.strokes import StrokeFormat
from train.play import (
    RECEIVER,
    SENDER,
    RandomPolicy,
    agent_player,
    comparison,
    game_options,
    game_seed,
    load_agents,
    play_game,
    session_setting,
)
from train.study import GameRecord, StudyDB

TOKEN = re.compile(r"[A-Za-z0-9_-]{22}")  # secrets.token_urlsafe(16): 128 random bits
MAX_SECONDS = 24 * 3600.0  # a longer response time is a broken client, not a person
GAMES_KEPT = 128  # prepared games kept in memory (at 64 px, 100 candidates: ~0.6 MB each)
MAX_PATH_POINTS = 2000  # points of one drag (the page keeps them 0.01 canvas units apart)


class StudyError(Exception):
    """A request the study refuses: ``status`` is its HTTP status, the text says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answer:
    """What a participant sends for one game, checked: a choice or strokes, and the time."""

    choice: int | None
    strokes: np.ndarray | None
    response_time: float


@dataclass(frozen=True)
class Prepared:
    """A game before the person's answer: what their page shows, and (receiver role) the
    record fields of the agents' part (``train.play.play_game``'s), never sent."""

    page: dict
    game: dict


def png_data_url(image: np.ndarray) -> str:
    """An ``[H, W, 3]`` uint8 picture as a PNG ``data:`` URL (the page needs no image URLs)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class WebStudy:
    """One study setting (from ``train.play``'s flags) served to every participant who joins.

    The participant is one of the two players (``args.sender`` or ``args.receiver`` is
    ``"human"``); the other is a checkpoint or ``random``. Participant ``n`` (in order of
    joining) plays the games of seed ``args.seed + n % args.seeds``.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        if [args.sender, args.receiver].count("human") != 1:
            raise ValueError(
                "a web study needs exactly one human player: --sender human with an agent "
                "--receiver, or --receiver human with an agent --sender"
            )
        self.args = args
        self.role = SENDER if args.sender == "human" else RECEIVER
        agents = load_agents(args)
        self.options = game_options(args, agents)
        self.setting = session_setting(args, self.options, agents)
        self.env = sketchenv.parallel_env(**self.options)
        for agent in agents.values():
            if hasattr(agent, "check_env"):
                agent.check_env(self.env)
        self.n_lines = int(self.options["n_lines"])
        self.stroke_format = StrokeFormat.parse(self.options["stroke_format"])
        self.tolerance = 2 / (max(self.env.unwrapped.core.image_size) - 1)  # an image pixel
        self.n_candidates = self.env.n_candidates
        other = args.receiver if self.role == SENDER else args.sender
        self.agent_player = agent_player(other, self.env, agents)  # the one who is not a person
        self.compare, self.agent = comparison(args, agents)
        self.db = StudyDB(Path(args.db) if args.db else Path(args.output) / "study.sqlite")
        self.db.keep_participants()
        self.env_lock = threading.Lock()  # one env plays every game, one at a time
        self.db_lock = threading.Lock()
        self.prepared: OrderedDict[tuple[int, int], Prepared] = OrderedDict()

    # ----- participants -------------------------------------------------------------------
    def join(self) -> str:
        """A new participant: their unguessable token (the key of everything they do)."""
        token = secrets.token_urlsafe(16)
        with self.db_lock:
            seed = self.args.seed + self.db.participants() % self.args.seeds
            self.db.add_participant(token, seed)
        return token

    def _seed(self, token: str) -> int:
        if not isinstance(token, str) or not TOKEN.fullmatch(token):
            raise StudyError(404, "no such participant: the link is incomplete or mistyped")
        with self.db_lock:
            seed = self.db.participant_seed(token)
        if seed is None:
            raise StudyError(404, "no such participant: open the study's start page to join")
        return seed

    def progress(self, token: str) -> dict:
        """Where a participant stands: the next game (None when all are played), the score."""
        return self._progress(token, self._seed(token))

    def _progress(self, token: str, seed: int) -> dict:
        with self.db_lock:
            played = self.db.played(token, self.setting, seed)
            wins = self.db.wins(token, self.setting, seed)
        todo = [i for i in range(self.args.games) if i not in played]
        return {
            **self.description(),
            "played": len(played),
            "next_game": todo[0] if todo else None,
            "wins": wins if self.args.feedback else None,
        }

    def description(self) -> dict:
        """What anyone may know of the study: the participant's role and the game's sizes."""
        return {
            "role": "sender" if self.role == SENDER else "receiver",
            "n_games": self.args.games,
            "feedback": self.args.feedback,
            "n_lines": self.n_lines,
            "stroke_format": str(self.stroke_format),
            "tolerance": self.tolerance,
            "n_candidates": self.n_candidates,
        }

    def _check_game(self, token: str, index: object) -> tuple[int, int]:
        """The participant's seed, once ``index`` is their next game (else a 404 or 409)."""
        seed = self._seed(token)
        if not isinstance(index, int) or not 0 <= index < self.args.games:
            raise StudyError(
                404, f"no game {index!r}: games are numbered 0 to {self.args.games - 1}"
            )
        next_game = self._progress(token, seed)["next_game"]
        if next_game is None or index < next_game:
            raise StudyError(409, f"game {index} is already answered; ask for the next game")
        if index > next_game:
            raise StudyError(409, f"game {index} is not open yet: play game {next_game}")
        return seed, index

    # ----- games --------------------------------------------------------------------------
    def page(self, token: str, index: int) -> dict:
        """What the participant's page shows of their next game: only their own view."""
        seed, index = self._check_game(token, index)
        return {"game": index, **self._prepared(seed, index).page}

    def _prepared(self, seed: int, index: int) -> Prepared:
        """Game ``index`` of ``seed`` as far as the agents play it before the person does;
        kept for the next requests (participants with one seed share it), else rebuilt."""
        key = (seed, index)
        with self.env_lock:
            if key not in self.prepared:
                self.prepared[key] = self._prepare(seed, index)
                while len(self.prepared) > GAMES_KEPT:
                    self.prepared.popitem(last=False)
            return self.prepared[key]

    def _prepare(self, seed: int, index: int) -> Prepared:
        if self.role == SENDER:  # the agents act only once the person has drawn
            observations, _ = self.env.reset(seed=game_seed(seed, index))
            return Prepared({"image": png_data_url(observations[SENDER]["image"])}, {})
        self._seed_random(seed, index)
        unanswered = lambda observation, agent: 0  # noqa: E731 (the person's choice comes later)
        game, state = play_game(
            self.env,
            self.agent_player,
            unanswered,
            seed=game_seed(seed, index),
            compare=self.compare,
        )
        page = {"sketch": png_data_url(state["sketch"])}
        page["candidates"] = [png_data_url(candidate) for candidate in state["candidates"]]
        return Prepared(page, game)

    def _seed_random(self, seed: int, index: int) -> None:
        """A ``random`` agent plays game ``index`` as in ``train.play`` (seeded per game)."""
        if isinstance(self.agent_player, RandomPolicy):
            role = 0 if self.role == RECEIVER else 1
            self.agent_player.seed((seed, index, role))

    def answer(self, token: str, index: int, body: object) -> dict:
        """Check and record the participant's answer to their next game; with feedback on,
        the reply tells the right answer (and, to a sender, what the agent picked)."""
        seed, index = self._check_game(token, index)
        answer = self.parse_answer(body)
        if self.role == RECEIVER:
            played = self._prepared(seed, index).game
            game = {**played, "choice": answer.choice, "response_time": answer.response_time}
        else:
            with self.env_lock:
                self._seed_random(seed, index)
                drawn = lambda observation, agent: answer.strokes  # noqa: E731
                game, state = play_game(
                    self.env,
                    drawn,
                    self.agent_player,
                    seed=game_seed(seed, index),
                    compare=self.compare,
                )
            if self.agent is not None and self.compare is None:  # the receiver is the agent
                game["agent_choice"] = game["choice"]
        record = GameRecord(token, self.setting, seed, index, agent=self.agent, **game)
        with self.db_lock:
            stored = self.db.record(record)
        if not stored:  # a double submission that lost the race to the first one
            raise StudyError(409, f"game {index} is already answered; ask for the next game")
        reply = {"game": index, "recorded": True}
        if self.args.feedback:
            reply.update(choice=game["choice"], target=game["target"], correct=record.correct)
            if self.role == SENDER:
                reply["sketch"] = png_data_url(state["sketch"])
                reply["candidates"] = [png_data_url(c) for c in state["candidates"]]
        return reply

    def parse_answer(self, body: object) -> Answer:
        """The answer a page sent, or a 400 naming what is wrong with it."""
        drawing = "paths" if isinstance(body, dict) and "paths" in body else "strokes"
        expected = {drawing if self.role == SENDER else "choice", "response_time"}
        if not isinstance(body, dict) or set(body) != expected:
            keys = sorted(body) if isinstance(body, dict) else type(body).__name__
            wanted = "'paths' or 'strokes'" if self.role == SENDER else "'choice'"
            raise StudyError(
                400,
                f"the answer must be a JSON object with {wanted} and 'response_time', got {keys}",
            )
        seconds = body["response_time"]
        if not _is_number(seconds) or not 0 <= seconds <= MAX_SECONDS:
            raise StudyError(
                400, f"response_time must be seconds in [0, {MAX_SECONDS:g}], got {seconds!r}"
            )
        if self.role == RECEIVER:
            choice = body["choice"]
            if not isinstance(choice, int) or isinstance(choice, bool):
                raise StudyError(400, f"choice must be a whole number, got {choice!r}")
            if not 0 <= choice < self.n_candidates:
                raise StudyError(400, f"choice must be in 0..{self.n_candidates - 1}, got {choice}")
            return Answer(choice, None, float(seconds))
        if drawing == "paths":
            return Answer(None, self.parse_paths(body["paths"]), float(seconds))
        return Answer(None, self.parse_strokes(body["strokes"]), float(seconds))

    def parse_strokes(self, strokes: object) -> np.ndarray:
        """1 to ``n_lines`` strokes of the game's format (coordinates in [-1, 1], options in
        their ranges), padded as the window does."""
        fmt = self.stroke_format
        if not isinstance(strokes, list) or not 1 <= len(strokes) <= self.n_lines:
            count = len(strokes) if isinstance(strokes, list) else type(strokes).__name__
            raise StudyError(
                400, f"strokes must be a list of 1 to {self.n_lines} strokes, got {count}"
            )
        low, high = fmt.bounds()
        for stroke in strokes:
            valid = isinstance(stroke, list) and len(stroke) == fmt.size
            if not valid or not all(map(_is_number, stroke)):
                raise StudyError(
                    400,
                    f"each stroke must be {fmt.size} numbers [{', '.join(fmt.columns)}] for this "
                    f"game's {fmt} strokes, got {stroke!r}",
                )
            outside = [
                c
                for c, v, a, b in zip(fmt.columns, stroke, low, high, strict=True)
                if not a <= v <= b
            ]
            if outside:
                raise StudyError(
                    400,
                    f"stroke {stroke} has {', '.join(outside)} out of range: coordinates "
                    "are in [-1, 1], width, opacity and colour in their ranges (strokes.py)",
                )
        return pad_strokes(strokes, self.n_lines, fmt)

    def parse_paths(self, paths: object) -> np.ndarray:
        """1 to ``n_lines`` drags, each a list of ``[x, y]`` points in [-1, 1], as strokes of
        the game's format (``fit_paths``)."""
        if not isinstance(paths, list) or not 1 <= len(paths) <= self.n_lines:
            count = len(paths) if isinstance(paths, list) else type(paths).__name__
            raise StudyError(400, f"paths must be a list of 1 to {self.n_lines} drags, got {count}")
        for path in paths:
            if not isinstance(path, list) or not 1 <= len(path) <= MAX_PATH_POINTS:
                raise StudyError(
                    400, f"each path must be a list of 1 to {MAX_PATH_POINTS} [x, y] points"
                )
            for point in path:
                if (
                    not isinstance(point, list)
                    or len(point) != 2
                    or not all(map(_is_number, point))
                ):
                    raise StudyError(400, f"each point must be 2 numbers [x, y], got {point!r}")
                if not all(-1 <= value <= 1 for value in point):
                    raise StudyError(
                        400, f"point {point} leaves the canvas: coordinates are in [-1, 1]"
                    )
        return fit_paths(paths, self.stroke_format, self.n_lines, self.tolerance)

    def close(self) -> None:
        self.env.close()
        self.db.close()


def fit_paths(
    paths: list, stroke_format: StrokeFormat, n_lines: int, tolerance: float
) -> np.ndarray:
    """Drags' pointer paths -> float32 ``[n_lines, size]`` strokes, padded: each drag as the
    window makes it (``path_to_strokes``), drag ``i`` keeping a stroke for each later one."""
    strokes: list[np.ndarray] = []
    for i, path in enumerate(paths):
        left = n_lines - len(strokes) - (len(paths) - 1 - i)
        strokes.extend(path_to_strokes(path, stroke_format, tolerance, max_strokes=left))
    return pad_strokes(strokes, n_lines, stroke_format)


def _is_number(value: object) -> bool:
    """A finite JSON number (bools are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
