"""The human-study record: one SQLite row per game, committed as the game ends, and the report.

A session is identified by (participant, setting, seed); a setting is the game, the data,
the stroke format and who played (sender, receiver, with or without feedback). Each game
also stores its stroke format in a column of its own (``line`` for databases made before
strokes had a format: opening one for writing adds the column, and a line setting's key
leaves the format out, so old sessions resume as they were). Game ``i`` of a session is
a pure function of ``(seed, i)``, so a participant who stops can continue later at the
next game and a kill loses at most the game in progress.

The report follows the paper's Tables 5 and 6: per setting, the agent receiver's
communication rate on the same games, then the players' communication rate and class
communication rate as mean ± standard deviation over participants.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agents.runs import write_csv as write_rows
from sketchenv.strokes import StrokeFormat

__all__ = [
    "GameRecord",
    "StudyDB",
    "format_report",
    "load_rows",
    "setting_key",
    "summarize",
    "write_csv",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS games (
    id INTEGER PRIMARY KEY,
    participant TEXT NOT NULL,
    setting TEXT NOT NULL,          -- canonical JSON of the setting (the grouping key)
    seed INTEGER NOT NULL,
    game_index INTEGER NOT NULL,
    game TEXT NOT NULL,
    dataset TEXT NOT NULL,
    split TEXT NOT NULL,
    n_lines INTEGER NOT NULL,
    sender TEXT NOT NULL,           -- human | random | checkpoint:<name>#<sha256 prefix>
    receiver TEXT NOT NULL,
    feedback INTEGER NOT NULL,
    sender_id INTEGER,              -- dataset index of the sender's image
    sender_label INTEGER,
    candidate_ids TEXT NOT NULL,    -- JSON list of dataset indices
    candidate_labels TEXT NOT NULL, -- JSON list of class labels
    target INTEGER NOT NULL,
    choice INTEGER NOT NULL,
    correct INTEGER NOT NULL,
    class_correct INTEGER NOT NULL,
    response_time REAL NOT NULL,    -- seconds the receiver took to choose
    agent TEXT,                     -- the agent receiver compared on the same game, if any
    agent_choice INTEGER,
    agent_correct INTEGER,
    agent_class_correct INTEGER,
    strokes TEXT NOT NULL,          -- JSON [n_lines][size]: the stroke format's columns
                                    -- (line: x0, y0, x1, y1), coordinates in [-1, 1]
    finished_at TEXT NOT NULL,      -- UTC, ISO 8601
    stroke_format TEXT NOT NULL DEFAULT 'line',  -- e.g. line, cubic+opacity (strokes.py)
    UNIQUE (participant, setting, seed, game_index)
)
"""
PARTICIPANTS = """
CREATE TABLE IF NOT EXISTS participants (  -- the web study's participants (train.serve)
    token TEXT PRIMARY KEY,         -- unguessable; it is also their games' participant
    seed INTEGER NOT NULL,          -- their sequence of games
    joined_at TEXT NOT NULL         -- UTC, ISO 8601
)
"""
TABLES = {"games", "participants", "sqlite_sequence"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class GameRecord:
    """One finished game of a session, as stored in the ``games`` table."""

    participant: str
    setting: dict
    seed: int
    game_index: int
    sender_id: int | None
    sender_label: int | None
    candidate_ids: list[int]
    candidate_labels: list[int]
    target: int
    choice: int
    response_time: float
    strokes: list[list[float]]
    agent: str | None = None
    agent_choice: int | None = None
    finished_at: str = field(default_factory=_now)

    @property
    def correct(self) -> bool:
        return self.choice == self.target

    @property
    def class_correct(self) -> bool:
        return self.candidate_labels[self.choice] == self.candidate_labels[self.target]


def setting_key(setting: dict) -> str:
    """The canonical JSON text of a setting: equal settings give equal keys (a ``line``
    stroke format is left out, so line settings keep the keys they had before formats)."""
    if str(setting.get("stroke_format", "line")) == "line":
        setting = {key: value for key, value in setting.items() if key != "stroke_format"}
    return json.dumps(setting, sort_keys=True, separators=(",", ":"))


def stroke_format_name(setting: dict) -> str:
    """The canonical name of a setting's stroke format (``line`` when it names none)."""
    return str(StrokeFormat.parse(setting.get("stroke_format") or "line"))


class StudyDB:
    """The study's SQLite file; every :meth:`record` is its own committed transaction.

    Writers open it in WAL mode and wait up to 30 s for one another, so several sessions
    (``train.play`` windows, the threads of ``train.serve``) can record into one file.
    """

    REQUIRED = ("game", "dataset", "split", "n_lines", "sender", "receiver", "feedback")

    def __init__(self, path: str | os.PathLike, *, read_only: bool = False) -> None:
        """Open (or, unless ``read_only``, create) the study database at ``path``. A file
        that is not one (another program's SQLite file, or no database at all) is
        refused, never changed."""
        self.path = Path(path)
        try:
            if read_only:
                self.connection = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.connection = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self.connection.row_factory = sqlite3.Row
            tables = self._tables()
        except (sqlite3.Error, OSError) as err:
            raise ValueError(
                f"cannot open the study database {self.path} ({err}): give --db a writable "
                "place for a new one, or an existing study database"
            ) from err
        if tables - TABLES:
            self.connection.close()
            raise ValueError(
                f"{self.path} is another program's SQLite database (tables "
                f"{sorted(tables)}), not a study database; give --db another file"
            )
        if "games" in tables:
            columns = {row[1] for row in self.connection.execute("PRAGMA table_info(games)")}
            if not {"participant", "setting", "seed", "game_index", "strokes"} <= columns:
                self.connection.close()
                raise ValueError(
                    f"{self.path} has a games table that is not a study's (columns "
                    f"{sorted(columns)}); give --db another file"
                )
        elif read_only:
            self.connection.close()
            raise ValueError(f"{self.path} holds no games: it is not a study database")
        else:
            with self.connection:
                self.connection.execute(SCHEMA)
        if not read_only:
            self._add_stroke_format_column()
            self.connection.execute("PRAGMA journal_mode=WAL")

    def _columns(self) -> set[str]:
        return {row[1] for row in self.connection.execute("PRAGMA table_info(games)")}

    def _add_stroke_format_column(self) -> None:
        """Migrate a database made before strokes had a format: its games drew lines."""
        if "stroke_format" in self._columns():
            return
        try:
            with self.connection:
                self.connection.execute(
                    "ALTER TABLE games ADD COLUMN stroke_format TEXT NOT NULL DEFAULT 'line'"
                )
        except sqlite3.OperationalError as err:
            if "stroke_format" not in self._columns():  # not another session's migration
                self.connection.close()
                raise ValueError(
                    f"cannot add the stroke_format column to {self.path} ({err}): give --db "
                    "a writable file"
                ) from err

    def keep_participants(self) -> None:
        """Add the web study's ``participants`` table if the file has none yet."""
        with self.connection:
            self.connection.execute(PARTICIPANTS)

    def add_participant(self, token: str, seed: int) -> None:
        """Register a web participant (committed at once, so a restart keeps them)."""
        with self.connection:
            self.connection.execute(
                "INSERT INTO participants (token, seed, joined_at) VALUES (?, ?, ?)",
                (token, seed, _now()),
            )

    def participant_seed(self, token: str) -> int | None:
        """The seed of a registered web participant; None for an unknown token."""
        row = self.connection.execute(
            "SELECT seed FROM participants WHERE token = ?", (token,)
        ).fetchone()
        return None if row is None else int(row[0])

    def participants(self) -> int:
        """How many web participants have joined."""
        return int(self.connection.execute("SELECT COUNT(*) FROM participants").fetchone()[0])

    def _tables(self) -> set[str]:
        rows = self.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}

    def played(self, participant: str, setting: dict, seed: int) -> set[int]:
        """Game indices this participant already finished in this setting with this seed."""
        rows = self.connection.execute(
            "SELECT game_index FROM games WHERE participant = ? AND setting = ? AND seed = ?",
            (participant, setting_key(setting), seed),
        )
        return {row[0] for row in rows}

    def wins(self, participant: str, setting: dict, seed: int) -> int:
        """How many of those games the receiver won (for the running score on resume)."""
        row = self.connection.execute(
            "SELECT COALESCE(SUM(correct), 0) FROM games "
            "WHERE participant = ? AND setting = ? AND seed = ?",
            (participant, setting_key(setting), seed),
        ).fetchone()
        return int(row[0])

    def record(self, game: GameRecord) -> bool:
        """Store one finished game and commit at once (a crash later cannot lose it);
        False when another session of this participant already stored this game."""
        missing = [key for key in self.REQUIRED if key not in game.setting]
        if missing:
            raise ValueError(f"setting lacks {missing}; it needs all of {list(self.REQUIRED)}")
        setting = game.setting
        agent_choice = game.agent_choice
        row = {
            "participant": game.participant,
            "setting": setting_key(setting),
            "seed": game.seed,
            "game_index": game.game_index,
            **{key: setting[key] for key in self.REQUIRED},
            "feedback": int(bool(setting["feedback"])),
            "sender_id": game.sender_id,
            "sender_label": game.sender_label,
            "candidate_ids": json.dumps([int(i) for i in game.candidate_ids]),
            "candidate_labels": json.dumps([int(i) for i in game.candidate_labels]),
            "target": game.target,
            "choice": game.choice,
            "correct": int(game.correct),
            "class_correct": int(game.class_correct),
            "response_time": game.response_time,
            "agent": game.agent,
            "agent_choice": agent_choice,
            "agent_correct": None if agent_choice is None else int(agent_choice == game.target),
            "agent_class_correct": None
            if agent_choice is None
            else int(game.candidate_labels[agent_choice] == game.candidate_labels[game.target]),
            "strokes": json.dumps(np.asarray(game.strokes, dtype=float).round(6).tolist()),
            "finished_at": game.finished_at,
            "stroke_format": stroke_format_name(setting),
        }
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        try:
            with self.connection:  # one transaction, committed on exit
                cursor = self.connection.execute(
                    f"INSERT INTO games ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING",
                    tuple(row.values()),
                )
        except sqlite3.OperationalError as err:  # read-only file, full disk, locked
            raise ValueError(
                f"cannot record the game in {self.path} ({err}): give --db a writable file"
            ) from err
        return cursor.rowcount == 1

    def rows(self) -> list[dict]:
        """Every stored game as a dict, in the order played (``stroke_format`` is
        ``line`` for the games of a database made before strokes had a format)."""
        cursor = self.connection.execute("SELECT * FROM games ORDER BY id")
        return [{"stroke_format": "line", **dict(row)} for row in cursor]

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> StudyDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else math.nan
    return float(array.mean()), std


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Per setting: agent rate on the same games, players' rates over participants, counts.

    Rates are fractions in [0, 1]. A participant's rate is over the games they finished;
    ``comm_rate``/``class_rate`` are the mean over participants and ``*_std`` the sample
    standard deviation over participants; ``agent_rate`` pools every game of the setting
    on which an agent receiver was compared (NaN when none was).
    """
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_setting[row["setting"]].append(row)
    summary = []
    for key, games in by_setting.items():
        by_participant: dict[str, list[dict]] = defaultdict(list)
        for game in games:
            by_participant[game["participant"]].append(game)
        comm = [np.mean([g["correct"] for g in p]) for p in by_participant.values()]
        klass = [np.mean([g["class_correct"] for g in p]) for p in by_participant.values()]
        compared = [g["agent_correct"] for g in games if g["agent_correct"] is not None]
        comm_mean, comm_std = _mean_std(comm)
        class_mean, class_std = _mean_std(klass)
        setting = json.loads(key)
        summary.append(
            {
                **setting,
                "stroke_format": games[0]["stroke_format"],
                "agent": next((g["agent"] for g in games if g["agent"]), None),
                "agent_rate": float(np.mean(compared)) if compared else math.nan,
                "agent_games": len(compared),
                "comm_rate": comm_mean,
                "comm_std": comm_std,
                "class_rate": class_mean,
                "class_std": class_std,
                "games": len(games),
                "participants": len(by_participant),
                "mean_response_time": float(np.mean([g["response_time"] for g in games])),
            }
        )
    order = (
        "game",
        "dataset",
        "split",
        "sender",
        "receiver",
        "n_lines",
        "stroke_format",
        "feedback",
    )
    return sorted(summary, key=lambda r: tuple(str(r.get(k)) for k in order))


def _percent(value: float, std: float | None = None) -> str:
    if math.isnan(value):
        return "-"
    text = f"{100 * value:.1f}%"
    if std is not None:
        text += " (±-)" if math.isnan(std) else f" (±{100 * std:.1f})"
    return text


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def format_report(summary: Sequence[dict]) -> str:
    """The summary as a plain-text table, one line per setting, split by feedback."""
    if not summary:
        return "no games recorded yet"
    headers = (
        "game",
        "dataset",
        "split",
        "distractors",
        "sender",
        "loss",
        "receiver",
        "lines",
        "strokes",
        "agent comm. rate",
        "comm. rate",
        "class comm. rate",
        "games",
        "participants",
    )
    blocks = []
    for feedback, title in ((False, "no feedback (no learning allowed)"), (True, "with feedback")):
        lines = [
            (
                row["game"],
                row["dataset"],
                row["split"],
                "default" if row.get("n_distractors") is None else str(row["n_distractors"]),
                row["sender"],
                row.get("sender_loss") or "-",
                row["receiver"],
                str(row["n_lines"]),
                row.get("stroke_format") or "line",
                _percent(row["agent_rate"]),
                _percent(row["comm_rate"], row["comm_std"]),
                _percent(row["class_rate"], row["class_std"]),
                str(row["games"]),
                str(row["participants"]),
            )
            for row in summary
            if bool(row["feedback"]) == feedback
        ]
        if not lines:
            continue
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
        table = [f"{title}:", _row(headers, widths)] + [_row(line, widths) for line in lines]
        blocks.append("\n".join(table))
    note = "rates: mean (± sample std) over participants; agent: its receiver on the same games"
    return "\n\n".join([*blocks, note])


def write_csv(summary: Sequence[dict], path: str | os.PathLike) -> None:
    """Write the summary rows (fractions, not percent) to a CSV file, atomically."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"--csv {path} is a folder: give a file name, e.g. {path / 'study.csv'}"
        )
    fields = list(dict.fromkeys(key for row in summary for key in row))
    write_rows(path, list(summary), fields)


def load_rows(path: str | os.PathLike) -> list[dict]:
    """Every game stored in the study database at ``path`` (which must exist)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no study database at {path}; play some games first")
    with StudyDB(path, read_only=True) as db:
        return db.rows()


if __name__ == "__main__":
    print(
        "python -m train.study: error: this is the study database's library, with no command "
        "line; record games with python -m train.play --db FILE, report them with "
        "python -m train.play --report FILE",
        file=sys.stderr,
    )
    sys.exit(2)
