"""`python -m train.play`: sessions recorded game by game, resuming, and the study report."""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
from fakedata import write_run

import sketchenv
from train import play, study
from train.study import GameRecord, StudyDB, format_report, load_rows, summarize

# small, fast games on the built-in procedural dataset
GAME = ["--dataset", "shapes", "--image-size", "16", "--n-distractors", "5", "--n-lines", "3"]


def session(tmp_path, *extra: str, db: str = "study.sqlite") -> list[str]:
    return [*GAME, "--games", "5", "--seed", "7", "--db", str(tmp_path / db), *extra]


def rows(path) -> list[dict]:
    with StudyDB(path) as db:
        return db.rows()


def test_agents_session_records_every_game_with_consistent_fields(tmp_path):
    played = play.run(
        play.parse_args(session(tmp_path, "--sender", "random", "--receiver", "random"))
    )
    games = rows(tmp_path / "study.sqlite")
    assert played == 5 and [g["game_index"] for g in games] == [0, 1, 2, 3, 4]
    for g in games:
        ids, labels = json.loads(g["candidate_ids"]), json.loads(g["candidate_labels"])
        assert len(ids) == len(labels) == 6 and len(set(ids)) == 6
        assert g["correct"] == int(g["choice"] == g["target"])
        assert g["class_correct"] == int(labels[g["choice"]] == labels[g["target"]])
        assert g["sender_id"] == ids[g["target"]]  # original game: the target is the sender's image
        assert np.asarray(json.loads(g["strokes"])).shape == (3, 4)
        assert g["participant"] == "agents" and g["sender"] == g["receiver"] == "random"
        assert g["agent_choice"] is None and g["response_time"] >= 0
    # random players are seeded: the same session again plays the same games and moves
    play.run(
        play.parse_args(
            session(tmp_path, "--sender", "random", "--receiver", "random", db="again.sqlite")
        )
    )
    again = rows(tmp_path / "again.sqlite")
    keys = ("candidate_ids", "target", "choice", "strokes")
    assert [[g[k] for k in keys] for g in again] == [[g[k] for k in keys] for g in games]
    # a finished session plays nothing more
    assert (
        play.run(play.parse_args(session(tmp_path, "--sender", "random", "--receiver", "random")))
        == 0
    )


def test_a_kill_between_games_loses_nothing_and_the_session_continues(tmp_path):
    """SIGKILL during game 3: games 0-2 are on disk; rerunning plays 3-4, as if never stopped."""
    args = session(tmp_path, "--sender", "random", "--receiver", "random")
    code = textwrap.dedent(
        f"""
        import os, signal
        from train import play, study
        original = play.play_game
        def play_game(env, *args, seed, **kwargs):
            if seed == play.game_seed(7, 3):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(env, *args, seed=seed, **kwargs)
        play.play_game = play_game
        play.main({args!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert result.returncode == -9, result.stderr.decode()
    killed = rows(tmp_path / "study.sqlite")
    assert [g["game_index"] for g in killed] == [0, 1, 2]
    with sqlite3.connect(tmp_path / "study.sqlite") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    assert play.run(play.parse_args(args)) == 2
    resumed = rows(tmp_path / "study.sqlite")
    play.run(
        play.parse_args(
            session(tmp_path, "--sender", "random", "--receiver", "random", db="whole.sqlite")
        )
    )
    whole = rows(tmp_path / "whole.sqlite")
    keys = ("game_index", "candidate_ids", "target", "choice", "strokes")
    assert [[g[k] for k in keys] for g in resumed] == [[g[k] for k in keys] for g in whole]


class ClickingReceiver(play.HumanReceiver):
    """A human receiver whose 'person' clicks the first candidate, and presses Esc on game 3."""

    calls = 0

    def __call__(self, observation, agent="receiver_0"):
        import pygame

        type(self).calls += 1
        if type(self).calls == 3:
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, mod=0))
        else:
            tile = self.window.receiver_layout((16, 16), 6).candidates[0]
            pos = (tile[0] + tile[2] // 2, tile[1] + tile[3] // 2)
            pygame.event.post(pygame.event.Event(pygame.MOUSEBUTTONDOWN, pos=pos, button=1))
        return super().__call__(observation, agent)


def headless_person(monkeypatch):
    """A dummy display whose 'person' clicks candidates and presses space on text screens."""
    pygame = pytest.importorskip("pygame")
    from sketchenv import human

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setattr(human, "_display", human._Display())
    monkeypatch.setattr(play, "HumanReceiver", ClickingReceiver)
    original_open = human._Display.open

    def open_and_press_keys(self, *args):
        original_open(self, *args)
        pygame.time.set_timer(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_SPACE, mod=0), 15)

    monkeypatch.setattr(human._Display, "open", open_and_press_keys)
    return pygame


@pytest.mark.parametrize("feedback", ["--feedback", "--no-feedback"])
def test_a_human_receiver_session_quit_with_escape_keeps_finished_games(
    tmp_path, monkeypatch, feedback
):
    pygame = headless_person(monkeypatch)
    monkeypatch.setattr(ClickingReceiver, "calls", 0)
    args = session(
        tmp_path, "--sender", "random", "--receiver", "human", "--participant", "ann", feedback
    )
    assert play.run(play.parse_args(args)) == 2
    assert not pygame.display.get_init()  # the window was closed on the way out
    games = rows(tmp_path / "study.sqlite")
    assert [(g["game_index"], g["choice"], g["participant"]) for g in games] == [
        (0, 0, "ann"),
        (1, 0, "ann"),
    ]
    assert all(
        g["response_time"] > 0 and g["feedback"] == (feedback == "--feedback") for g in games
    )

    monkeypatch.setattr(ClickingReceiver, "calls", 10)  # no more Esc: the session finishes
    assert play.run(play.parse_args(args)) == 3
    assert [g["game_index"] for g in rows(tmp_path / "study.sqlite")] == [0, 1, 2, 3, 4]


class DrawingSender(play.HumanSender):
    """A human sender whose 'person' drags one horizontal line across the middle, then Enter."""

    def __call__(self, observation, agent="sender_0"):
        import pygame

        canvas = self.window.sender_layout((16, 16)).canvas
        y = canvas[1] + canvas[3] // 2
        for kind, x in (
            (pygame.MOUSEBUTTONDOWN, canvas[0] + 1),
            (pygame.MOUSEBUTTONUP, canvas[0] + canvas[2] - 2),
        ):
            pygame.event.post(pygame.event.Event(kind, pos=(x, y), button=1))
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RETURN, mod=0))
        return super().__call__(observation, agent)


@pytest.mark.parametrize("stroke_format", ["line", "cubic+opacity"])
def test_two_humans_share_the_window_and_their_drawing_is_recorded(
    tmp_path, monkeypatch, stroke_format
):
    headless_person(monkeypatch)
    monkeypatch.setattr(play, "HumanSender", DrawingSender)
    monkeypatch.setattr(ClickingReceiver, "calls", 10)
    args = ["--sender", "human", "--receiver", "human", "--participant", "pair", "--games", "2"]
    args += ["--stroke-format", stroke_format, "--db", str(tmp_path / "s.sqlite")]
    assert play.run(play.parse_args([*GAME, *args])) == 2
    for game in rows(tmp_path / "s.sqlite"):
        strokes = np.asarray(json.loads(game["strokes"]))
        assert game["stroke_format"] == stroke_format and game["choice"] == 0
        assert game["sender"] == game["receiver"] == "human"
        if stroke_format == "line":
            assert strokes.shape == (3, 4)
            np.testing.assert_allclose(strokes[0], [-1, 0, 1, 0], atol=0.07)  # the dragged line
        else:  # one straight curve (controls along the drag), the others left out
            assert strokes.shape == (3, 9)
            np.testing.assert_allclose(strokes[0, 0:8:2], [-1, -1 / 3, 1 / 3, 1], atol=0.07)
            np.testing.assert_allclose(strokes[0, 1:8:2], 0, atol=0.07)
            np.testing.assert_array_equal(strokes[:, 8], [1, 0, 0])


def test_a_curve_session_is_its_own_setting_beside_the_line_one(tmp_path):
    db = tmp_path / "study.sqlite"
    players = ["--sender", "random", "--receiver", "random"]
    play.run(play.parse_args(session(tmp_path, *players)))
    play.run(play.parse_args(session(tmp_path, *players, "--stroke-format", "quadratic+width")))
    games = rows(db)
    lines, curves = games[:5], games[5:]
    assert len(curves) == 5  # the line session played first does not count as the curve one
    assert {g["stroke_format"] for g in lines} == {"line"}
    assert {g["stroke_format"] for g in curves} == {"quadratic+width"}
    assert "stroke_format" not in json.loads(lines[0]["setting"])  # keys as before formats
    assert json.loads(curves[0]["setting"])["stroke_format"] == "quadratic+width"
    for g in curves:
        strokes = np.asarray(json.loads(g["strokes"]))
        assert strokes.shape == (3, 7) and (strokes[:, 6] >= 0.25).all()  # widths in range
    summary = summarize(games)
    assert sorted(r["stroke_format"] for r in summary) == ["line", "quadratic+width"]
    assert "quadratic+width" in format_report(summary)
    with pytest.raises(SystemExit):
        play.parse_args(["--receiver", "random", "--stroke-format", "spline"])


def test_a_database_of_the_old_schema_is_read_migrated_and_resumed(tmp_path):
    """A study file made before the stroke_format column: readable, and sessions continue."""
    players = ["--sender", "random", "--receiver", "random"]
    play.run(play.parse_args(session(tmp_path, *players, db="new.sqlite")))
    old = tmp_path / "old.sqlite"
    old_schema = "\n".join(
        line for line in study.SCHEMA.splitlines() if not line.strip().startswith("stroke_format")
    )
    assert "stroke_format" not in old_schema and "strokes TEXT" in old_schema
    with sqlite3.connect(old) as connection:
        connection.execute(old_schema)
        columns = [row[1] for row in connection.execute("PRAGMA table_info(games)")]
        for game in rows(tmp_path / "new.sqlite")[:3]:  # games 0-2, as an old session left them
            values = [game[c] for c in columns]
            connection.execute(f"INSERT INTO games VALUES ({', '.join('?' * len(values))})", values)
    connection.close()
    assert [g["stroke_format"] for g in load_rows(old)] == ["line"] * 3  # read-only: as lines
    with sqlite3.connect(old) as connection:  # reading changed nothing
        assert "stroke_format" not in {r[1] for r in connection.execute("PRAGMA table_info(games)")}
    connection.close()

    assert play.run(play.parse_args(session(tmp_path, *players, db="old.sqlite"))) == 2  # 3, 4
    resumed = rows(old)
    assert [g["game_index"] for g in resumed] == [0, 1, 2, 3, 4]
    assert len({g["setting"] for g in resumed}) == 1 and {g["stroke_format"] for g in resumed} == {
        "line"
    }
    keys = ("game_index", "setting", "candidate_ids", "target", "choice", "strokes")
    assert [[g[k] for k in keys] for g in resumed] == [
        [g[k] for k in keys] for g in rows(tmp_path / "new.sqlite")
    ]
    play.run(
        play.parse_args(session(tmp_path, *players, "--stroke-format", "cubic", db="old.sqlite"))
    )
    assert [g["stroke_format"] for g in rows(old)][5:] == ["cubic"] * 5
    assert len(summarize(rows(old))) == 2


TRAINED = {  # AgentPolicy.env_options() of the (fake) checkpoint's training game
    "game": "original",
    "dataset": "shapes",
    "root": "./data",
    "image_size": 16,
    "n_distractors": 5,
    "n_lines": 3,
    "sigma2": 1e-3,
    "kernel": "exp",
    "composite": "softor",
    "invert": True,
}


class FakeAgent:
    """A deterministic stand-in for AgentPolicy: fixed strokes, picks the darkest candidate."""

    config = SimpleNamespace(loss="hinge", perceptual_coef=1.0)
    loaded: ClassVar[list] = []

    def __init__(self, path, device, strict) -> None:
        self.strict = strict
        self.loaded.append(self)

    def env_options(self) -> dict:
        return dict(TRAINED)

    def __call__(self, observation, agent):
        if agent == "sender_0":
            return np.tile(np.float32([-0.5, 0.0, 0.5, 0.0]), (3, 1))
        n = sum(key.startswith("candidate_") for key in observation)
        return int(np.argmin([observation[f"candidate_{i}"].mean() for i in range(n)]))


def test_the_agent_receiver_answers_the_same_games_for_comparison(tmp_path, monkeypatch):
    checkpoint = tmp_path / "perceptual.pt"
    checkpoint.write_bytes(b"weights")
    monkeypatch.setattr(play, "load_agent", FakeAgent)
    monkeypatch.setattr(FakeAgent, "loaded", [])
    db = str(tmp_path / "study.sqlite")
    args = ["--sender", str(checkpoint), "--receiver", "random", "--games", "4", "--db", db]
    play.run(play.parse_args(args))  # no game flags: the checkpoint's game is played
    games = rows(tmp_path / "study.sqlite")
    identity = play.checkpoint_identity(str(checkpoint))
    assert identity.startswith("checkpoint:perceptual.pt#") and games[0]["sender"] == identity
    setting = json.loads(games[0]["setting"])
    assert setting["sigma2"] == 1e-3 and setting["n_lines"] == 3 and setting["split"] == "test"
    assert setting["sender_loss"] == "hinge + 1 perceptual"
    assert all(len(json.loads(g["candidate_ids"])) == 6 for g in games)
    assert all(g["agent"] == identity and g["agent_choice"] is not None for g in games)
    assert all(g["agent_correct"] == int(g["agent_choice"] == g["target"]) for g in games)
    assert len(FakeAgent.loaded) == 1  # one checkpoint, loaded once for both roles
    choices = [g["agent_choice"] for g in games]

    # the agent as the receiver itself: its choices are the record's and the agent column's
    args = ["--sender", str(checkpoint), "--receiver", str(checkpoint), "--games", "4"]
    play.run(play.parse_args([*args, "--db", str(tmp_path / "a.sqlite")]))
    agent_games = rows(tmp_path / "a.sqlite")
    assert [g["choice"] for g in agent_games] == [g["agent_choice"] for g in agent_games] == choices

    # flags override the checkpoint's game; the receiver then plays with fewer candidates
    play.run(play.parse_args([*args, "--n-distractors", "2", "--db", str(tmp_path / "b.sqlite")]))
    assert all(len(json.loads(g["candidate_ids"])) == 3 for g in rows(tmp_path / "b.sqlite"))
    assert FakeAgent.loaded[-1].strict is False


def test_a_real_checkpoint_plays_against_a_human_receiver(tmp_path, monkeypatch):
    """Integration with agents/: a freshly initialised run saved as a real checkpoint."""
    policies = pytest.importorskip("agents.policies")
    run = write_run(tmp_path / "run", image_size=16, lines=3)
    headless_person(monkeypatch)
    monkeypatch.setattr(ClickingReceiver, "calls", 10)
    db = tmp_path / "study.sqlite"
    argv = ["--sender", str(run), "--receiver", "human", "--participant", "bo", "--games", "3"]
    assert play.run(play.parse_args([*argv, "--no-feedback", "--db", str(db)])) == 3
    games = rows(db)
    policy = policies.AgentPolicy.from_checkpoint(run)
    for game in games:  # the agent receiver's choice is the checkpoint's own, on that game
        assert game["sender"] == game["agent"] and game["sender"].startswith("checkpoint:best.pt#")
        assert game["agent_choice"] is not None and game["choice"] == 0
        assert json.loads(game["setting"])["n_lines"] == 3
    env = sketchenv.parallel_env(**policy.env_options(split="test"))
    observations, _ = env.reset(seed=play.game_seed(0, 1))
    strokes = policy(observations["sender_0"], "sender_0")
    np.testing.assert_allclose(json.loads(games[1]["strokes"]), strokes, atol=1e-5)


def record(participant, setting, index, outcome, agent_right=True) -> GameRecord:
    """A game whose choice is right ('hit'), of the right class ('class') or wrong ('miss')."""
    labels = [0, 1, 0, 2]  # the target is candidate 0; candidate 2 shares its class
    choice = {"hit": 0, "class": 2, "miss": 1}[outcome]
    return GameRecord(
        participant=participant,
        setting=setting,
        seed=0,
        game_index=index,
        sender_id=10,
        sender_label=0,
        candidate_ids=[10, 11, 12, 13],
        candidate_labels=labels,
        target=0,
        choice=choice,
        response_time=2.0,
        strokes=[[0.0, 0.0, 1.0, 1.0]],
        agent="checkpoint:a.pt#0123456789ab",
        agent_choice=0 if agent_right else 3,
    )


SETTING = {
    "sender_loss": "hinge + 1 perceptual",
    "game": "original",
    "dataset": "stl10",
    "split": "test",
    "n_lines": 20,
    "sender": "checkpoint:a.pt#0123456789ab",
    "receiver": "human",
    "feedback": False,
}


@pytest.fixture
def fixture_db(tmp_path):
    path = tmp_path / "fixture.sqlite"
    with StudyDB(path) as db:
        for i, outcome in enumerate(["hit", "miss", "class", "hit"]):  # p1: 2/4 right, 3/4 class
            db.record(record("p1", SETTING, i, outcome, agent_right=i != 1))
        for i, outcome in enumerate(["miss", "class"]):  # p2: 0/2 right, 1/2 class
            db.record(record("p2", SETTING, i, outcome))
        db.record(record("p1", {**SETTING, "feedback": True}, 0, "hit"))
    return path


def test_report_numbers_match_a_hand_count(fixture_db, tmp_path, capsys):
    summary = summarize(rows(fixture_db))
    no_feedback, feedback = summary
    assert (no_feedback["games"], no_feedback["participants"]) == (6, 2)
    assert no_feedback["comm_rate"] == pytest.approx((2 / 4 + 0 / 2) / 2)
    assert no_feedback["comm_std"] == pytest.approx(math.sqrt(2 * 0.25**2))  # sample std
    assert no_feedback["class_rate"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert no_feedback["class_std"] == pytest.approx(math.sqrt(2 * 0.125**2))
    assert no_feedback["agent_rate"] == pytest.approx(5 / 6)
    assert (feedback["comm_rate"], feedback["games"], feedback["participants"]) == (1.0, 1, 1)
    assert math.isnan(feedback["comm_std"])

    text = format_report(summary)
    assert "no feedback" in text and "with feedback" in text
    assert "83.3%" in text and "25.0% (±35.4)" in text and "62.5% (±17.7)" in text
    assert "hinge + 1 perceptual" in text

    out = tmp_path / "report.csv"
    play.main(["--report", str(fixture_db), "--csv", str(out)])
    printed = capsys.readouterr().out
    assert "25.0% (±35.4)" in printed and f"wrote 2 settings to {out.resolve()}" in printed
    with open(out, newline="") as file:
        exported = list(csv.DictReader(file))
    assert len(exported) == 2 and float(exported[0]["comm_rate"]) == pytest.approx(0.25)
    assert exported[0]["receiver"] == "human" and exported[0]["participants"] == "2"


def test_a_game_is_recorded_once(fixture_db):
    first = rows(fixture_db)[0]
    with StudyDB(fixture_db) as db:  # a second session of p1 finishing the same game
        assert not db.record(record("p1", SETTING, 0, "miss"))
        assert db.record(record("p1", SETTING, 9, "miss"))
    assert len(rows(fixture_db)) == 8 and rows(fixture_db)[0] == first  # the first one kept


def test_files_that_are_not_study_databases_are_refused_untouched(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    connection.close()
    before = other.read_bytes()
    for opener in (load_rows, StudyDB):
        with pytest.raises(
            ValueError, match=r"another program's SQLite database \(tables \['notes'\]"
        ):
            opener(other)
    assert other.read_bytes() == before
    with sqlite3.connect(tmp_path / "games.sqlite") as connection:
        connection.execute("CREATE TABLE games (score INTEGER)")  # a games table, not ours
    connection.close()
    with pytest.raises(ValueError, match="has a games table that is not a study's"):
        load_rows(tmp_path / "games.sqlite")
    (tmp_path / "text.db").write_text("hello, not a database\n" * 100)
    with pytest.raises(ValueError, match=r"cannot open the study database .*text\.db"):
        load_rows(tmp_path / "text.db")
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(ValueError, match="holds no games"):
        load_rows(tmp_path / "empty.db")
    with pytest.raises(ValueError, match=r"cannot open the study database .*text\.db/study"):
        StudyDB(tmp_path / "text.db" / "study.sqlite")  # a "folder" that is a file


def test_report_csv_to_a_folder_is_explained(fixture_db, tmp_path):
    with pytest.raises(IsADirectoryError, match=r"--csv .* is a folder: give a file name"):
        play.main(["--report", str(fixture_db), "--csv", str(tmp_path)])


def test_a_study_database_in_a_read_only_folder_is_explained(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o500)
    if os.access(tmp_path / "locked", os.W_OK):  # root can write anywhere
        pytest.skip("running as root: a read-only folder is writable")
    with pytest.raises(ValueError, match=r"cannot open the study database .*locked/study\.sqlite"):
        StudyDB(tmp_path / "locked" / "study.sqlite")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--csv", "x.csv"], "--csv goes with --report"),
        (["--receiver", "human"], "--participant"),
        (["--games", "0"], "--games"),
        (["--receiver", "random", "--window-size", "200", "100"], "--window-size"),
        (["--receiver", "random", "--compare", "human"], "--compare takes a checkpoint"),
    ],
)
def test_bad_arguments_are_explained(argv, message, capsys):
    with pytest.raises(SystemExit):
        play.parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_missing_checkpoint_or_database_is_explained(tmp_path, capsys):
    with pytest.raises(SystemExit):
        play.parse_args(["--sender", str(tmp_path / "nope.pt"), "--receiver", "random"])
    assert "neither 'human', 'random' nor a checkpoint" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no study database"):
        play.report(str(tmp_path / "missing.sqlite"))
