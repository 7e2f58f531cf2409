"""The web study (train.serve): games, honesty, bad requests, load, kills, a real browser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flask")
pytest.importorskip("waitress")

from fakedata import write_run

import sketchenv
from train import play, serve
from train.webstudy import WebStudy, png_data_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.serve import call, load, play_receiver, serving, stored_games  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("serve") / "run", image_size=32, lines=4)


def study(tmp_path, *argv: str) -> tuple[WebStudy, object]:
    """A study on a fresh database and Flask's test client for it."""
    args = serve.parse_args([*argv, "--db", str(tmp_path / "study.sqlite"), "--games", "3"])
    web = WebStudy(args)
    return web, serve.make_app(web).test_client()


def rows(path) -> list[dict]:
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM games ORDER BY id")]
    finally:
        connection.close()


def join(client) -> str:
    reply = client.post("/api/join")
    assert reply.status_code == 201
    return reply.json["token"]


def test_a_receiver_plays_every_game_and_each_is_recorded_as_train_play_would(tmp_path, run):
    web, client = study(tmp_path, "--sender", str(run), "--receiver", "human")
    token = join(client)
    choices = [2, 0, 5]
    for index, choice in enumerate(choices):
        progress = client.get(f"/api/participants/{token}").json
        assert progress["next_game"] == index and progress["played"] == index
        page = client.get(f"/api/participants/{token}/games/{index}").json
        assert sorted(page) == ["candidates", "game", "sketch"] and len(page["candidates"]) == 6
        reply = client.post(
            f"/api/participants/{token}/games/{index}",
            json={"choice": choice, "response_time": 1.5 + index},
        ).json
        assert reply["choice"] == choice and reply["correct"] == (choice == reply["target"])
    assert client.get(f"/api/participants/{token}").json["next_game"] is None
    web.close()
    games = rows(tmp_path / "study.sqlite")
    policy = play.load_agent(str(run), None, True)
    env = sketchenv.parallel_env(**policy.env_options(split="test"))
    for index, game in enumerate(games):  # the same game, sketch and agent answer as train.play
        assert (game["participant"], game["game_index"], game["seed"]) == (token, index, 0)
        assert game["choice"] == choices[index] and game["response_time"] == 1.5 + index
        observations, _ = env.reset(seed=play.game_seed(0, index))
        strokes = policy(observations["sender_0"], "sender_0")
        np.testing.assert_allclose(json.loads(game["strokes"]), strokes, atol=1e-5)
        observations, *_ = env.step({"sender_0": strokes, "receiver_0": 0})
        assert game["agent_choice"] == policy(observations["receiver_0"], "receiver_0")
        assert game["target"] == int(env.unwrapped.current_game.targets[0, 0])
    summary = play.summarize(play.load_rows(tmp_path / "study.sqlite"))
    assert summary[0]["games"] == 3 and summary[0]["participants"] == 1


def test_a_sender_draws_and_the_agent_receiver_answers(tmp_path, run):
    web, client = study(tmp_path, "--sender", "human", "--receiver", str(run))
    token = join(client)
    page = client.get(f"/api/participants/{token}/games/0").json
    assert sorted(page) == ["game", "image"]  # the picture to draw, and nothing else
    drawn = [[-0.5, -0.5, 0.5, -0.5], [0.5, -0.5, 0.0, 0.5]]
    reply = client.post(
        f"/api/participants/{token}/games/0", json={"strokes": drawn, "response_time": 9.0}
    ).json
    assert len(reply["candidates"]) == 6 and reply["sketch"].startswith("data:image/png")
    web.close()
    (game,) = rows(tmp_path / "study.sqlite")
    strokes = np.array(json.loads(game["strokes"]))
    assert strokes.shape == (4, 4)  # padded to the game's 4 lines with dots on the first start
    np.testing.assert_allclose(strokes[:2], drawn)
    np.testing.assert_allclose(strokes[2:], [[-0.5, -0.5, -0.5, -0.5]] * 2)
    assert game["choice"] == game["agent_choice"] == reply["choice"]
    assert game["receiver"].startswith("checkpoint:best.pt#") and game["sender"] == "human"


def test_the_page_never_sees_the_target_or_the_senders_image(tmp_path, run):
    web, client = study(
        tmp_path,
        "--sender",
        str(run),
        "--receiver",
        "human",
        "--game",
        "oo-different",
        "--no-feedback",
    )
    token = join(client)
    page = client.get(f"/api/participants/{token}/games/0").get_data(as_text=True)
    observations, _ = web.env.reset(seed=play.game_seed(0, 0))
    assert png_data_url(observations["sender_0"]["image"]) not in page  # not a candidate here
    assert "target" not in page and "label" not in page
    reply = client.post(
        f"/api/participants/{token}/games/0", json={"choice": 1, "response_time": 1}
    )
    assert reply.json == {"game": 0, "recorded": True}  # no feedback: the answer stays hidden
    web.close()


def test_participants_with_the_same_seed_see_the_same_games(tmp_path, run):
    web, client = study(tmp_path, "--sender", str(run), "--receiver", "human", "--seeds", "2")
    first, second, third = (join(client) for _ in range(3))
    pages = [client.get(f"/api/participants/{t}/games/0").json for t in (first, second, third)]
    assert pages[0] == pages[2] and pages[0] != pages[1]  # seeds 0, 1, 0
    web.close()
    with sqlite3.connect(tmp_path / "study.sqlite") as connection:
        seeds = [row[0] for row in connection.execute("SELECT seed FROM participants")]
    assert seeds == [0, 1, 0] and len({first, second, third}) == 3


def test_a_double_submission_is_recorded_once(tmp_path, run):
    web, client = study(tmp_path, "--sender", str(run), "--receiver", "human")
    token = join(client)
    client.get(f"/api/participants/{token}/games/0")
    path = f"/api/participants/{token}/games/0"
    answer = {"choice": 1, "response_time": 2.0}
    statuses = []
    threads = [
        threading.Thread(target=lambda: statuses.append(client.post(path, json=answer).status_code))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 409, 409, 409]
    assert client.post(path, json=answer).status_code == 409  # and again, later
    web.close()
    assert len(rows(tmp_path / "study.sqlite")) == 1


def bad_requests(token: str, other: str) -> list[tuple[str, str, str, object, int]]:
    """(name, method, path, body, expected status): hostile or broken requests."""
    games = f"/api/participants/{token}/games"
    game = f"{games}/0"
    right = {"choice": 1, "response_time": 1.0}
    guess = other[:-1] + ("B" if other[-1] == "A" else "A")  # one character from another's
    return [
        ("choice out of range", "POST", game, {"choice": 6, "response_time": 1.0}, 400),
        ("negative choice", "POST", game, {"choice": -1, "response_time": 1.0}, 400),
        ("choice as text", "POST", game, {"choice": "1", "response_time": 1.0}, 400),
        ("choice as bool", "POST", game, {"choice": True, "response_time": 1.0}, 400),
        ("choice as float", "POST", game, {"choice": 1.0, "response_time": 1.0}, 400),
        (
            "strokes to a receiver",
            "POST",
            game,
            {"strokes": [[0, 0, 1, 1]], "response_time": 1},
            400,
        ),
        ("extra key", "POST", game, {**right, "target": 1}, 400),
        ("missing time", "POST", game, {"choice": 1}, 400),
        ("NaN time", "POST", game, "NaN-time", 400),
        ("negative time", "POST", game, {"choice": 1, "response_time": -1}, 400),
        ("a list body", "POST", game, [1, 2], 400),
        ("not JSON", "POST", game, b"{choice: 1", 400),
        ("form data", "POST", game, "form", 415),
        ("oversized body", "POST", game, {**right, "pad": "x" * 100_000}, 413),
        ("unknown token", "POST", game.replace(token, "A" * 22), right, 404),
        ("malformed token", "GET", "/api/participants/..%2F..%2Fetc", None, 404),
        ("SQL in the token", "GET", "/api/participants/x'%20OR%20'1'='1", None, 404),
        ("a game not open yet", "POST", f"{games}/1", right, 409),
        ("a game past the end", "GET", f"{games}/3", None, 404),
        ("a negative game", "GET", f"{games}/-1", None, 404),
        ("a guessed token", "POST", f"/api/participants/{guess}/games/0", right, 404),
        ("a replayed answer", "POST", f"/api/participants/{other}/games/0", right, 409),
        ("asking for the target", "GET", f"/api/participants/{token}/target", None, 404),
        ("a path outside the page", "GET", "/static/..%2F..%2Fpyproject.toml", None, 404),
        ("a server file", "GET", "/static/serve.py", None, 404),
        ("joining by GET", "GET", "/api/join", None, 405),
    ]


def test_bad_requests_get_a_clear_4xx_and_change_nothing(tmp_path, run):
    web, client = study(tmp_path, "--sender", str(run), "--receiver", "human")
    token, other = join(client), join(client)
    client.post(f"/api/participants/{other}/games/0", json={"choice": 0, "response_time": 1.0})
    database = tmp_path / "study.sqlite"
    before = rows(database)
    cases = bad_requests(token, other)
    assert len(cases) >= 20
    for name, method, path, body, status in cases:
        if body == "NaN-time":
            reply = client.post(
                path, data='{"choice": 1, "response_time": NaN}', content_type="application/json"
            )
        elif body == "form":
            reply = client.post(path, data={"choice": "1"})
        elif isinstance(body, bytes):
            reply = client.post(path, data=body, content_type="application/json")
        else:
            reply = client.open(path, method=method, json=body)
        assert reply.status_code == status, (name, reply.status_code, reply.get_data(as_text=True))
        if reply.is_json:  # the page shows the reason as it is
            assert reply.json["error"], name
    assert rows(database) == before
    assert client.get(f"/api/participants/{token}").json["next_game"] == 0
    web.close()


def test_the_page_is_served_with_a_strict_policy(tmp_path, run):
    web, client = study(tmp_path, "--sender", str(run), "--receiver", "human")
    page = client.get("/")
    assert page.status_code == 200 and b"static/study.js" in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert client.get("/static/study.js").mimetype == "text/javascript"
    web.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sender", "human", "--receiver", "human"], "exactly one human"),
        (["--sender", "random", "--receiver", "random"], "exactly one human"),
        (["--port", "70000"], "--port must be"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--games", "0"], "--games must be >= 1"),
    ],
)
def test_bad_flags_are_explained(argv, message, capsys):
    with pytest.raises(SystemExit):
        serve.parse_args(argv)
    assert message in capsys.readouterr().err


def test_fifty_participants_at_once_lose_no_game(tmp_path, run):
    database = tmp_path / "study.sqlite"
    argv = ["--sender", str(run), "--receiver", "human", "--games", "2", "--db", str(database)]
    with serving([*argv, "--seeds", "5"]) as (url, _):
        result = load(url, participants=50)
    assert result["errors"] == [] and result["games"] == 100
    assert stored_games(database) == 100 and len(set(result["tokens"])) == 50


def test_a_killed_server_loses_no_finished_game_and_restarts_where_it_was(tmp_path, run):
    database = tmp_path / "study.sqlite"
    argv = ["--sender", str(run), "--receiver", "human", "--games", "4", "--db", str(database)]
    with serving(argv) as (url, process):
        _, reply = call(url, "api/join", {})
        token = reply["token"]
        for index in range(2):
            call(url, f"api/participants/{token}/games/{index}")
            status, _ = call(
                url, f"api/participants/{token}/games/{index}", {"choice": 1, "response_time": 1}
            )
            assert status == 200
        call(url, f"api/participants/{token}/games/2")  # a game in progress when it dies
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    assert [game["game_index"] for game in rows(database)] == [0, 1]
    with serving(argv) as (url, _):
        status, progress = call(url, f"api/participants/{token}")
        assert status == 200 and progress["next_game"] == 2 and progress["played"] == 2
        answer = {"choice": 3, "response_time": 1}  # the game open when it died, answered now
        assert call(url, f"api/participants/{token}/games/2", answer)[0] == 200
        finished, _ = play_receiver(url, seed=0)  # a new participant also plays through
    games = rows(database)
    assert len(games) == 3 + 4 and finished != token
    for key in ("target", "strokes", "candidate_ids", "agent_choice"):  # game 2, rebuilt the same
        assert games[2][key] == games[5][key]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt install chromium)")
def test_a_real_browser_plays_receiver_and_sender_games(tmp_path, run):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    shots = Path(os.environ.get("SKETCHENV_SCREENSHOTS", tmp_path))
    database = tmp_path / "study.sqlite"
    common = ["--games", "3", "--db", str(database)]
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        with serving(["--sender", str(run), "--receiver", "human", *common]) as (url, _):
            page.goto(url)
            page.click("#start")
            page.wait_for_selector(".candidates button")
            page.screenshot(path=str(shots / "study-receiver.png"))
            page.click(".candidates button[data-index='2']")
            page.click("#next")
            page.wait_for_selector(".candidates button:not([disabled])")
            assert "Game 2 of 3" in page.inner_text(".progress")
            page.reload()  # mid-session: the address keeps the token
            page.wait_for_selector(".candidates button:not([disabled])")
            assert "Game 2 of 3" in page.inner_text(".progress")
            for _ in range(2):
                page.click(".candidates button[data-index='0']")
                page.click("#next")
            page.wait_for_selector("#done")
            phone = browser.new_context(  # a phone: small screen, fingers, a new participant
                viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
            ).new_page()
            phone.goto(url)
            phone.tap("#start")
            phone.tap(".candidates button[data-index='1']")
            phone.wait_for_selector("#next")
            images = phone.locator(".large").bounding_box()
            assert 200 <= images["width"] <= 390  # the sketch shown large, inside the screen
        games = rows(database)
        receiver_games = [g for g in games if g["participant"] == games[0]["participant"]]
        assert [g["choice"] for g in games if g not in receiver_games] == [1]  # the phone's
        assert [g["choice"] for g in receiver_games] == [2, 0, 0]
        assert [g["game_index"] for g in receiver_games] == [0, 1, 2]
        assert all(g["receiver"] == "human" for g in receiver_games)

        page = browser.new_page(viewport={"width": 1000, "height": 900})
        with serving(["--sender", "human", "--receiver", str(run), *common]) as (url, _):
            page.goto(url)
            page.click("#start")
            page.wait_for_selector("#canvas")
            box = page.locator("#canvas").bounding_box()
            corners = [(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8)]
            for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True):
                page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
                page.mouse.down()
                page.mouse.move(
                    box["x"] + x1 * box["width"], box["y"] + y1 * box["height"], steps=5
                )
                page.mouse.up()
            assert page.inner_text("#count") == "4 of 4 lines"
            page.screenshot(path=str(shots / "study-sender.png"))
            page.click("#undo")
            assert page.inner_text("#count") == "3 of 4 lines"
            page.click("#send")
            page.wait_for_selector("#feedback")
        browser.close()
    assert errors == []
    drawn = rows(database)[-1]
    assert drawn["sender"] == "human" and drawn["game_index"] == 0
    strokes = np.array(json.loads(drawn["strokes"]))
    size = 32  # the run's image size: the page maps canvas points to pixel centres
    unit = lambda f: np.clip(2 * (f * size - 0.5) / (size - 1) - 1, -1, 1)  # noqa: E731
    np.testing.assert_allclose(strokes[0], [unit(0.2), unit(0.2), unit(0.8), unit(0.2)], atol=0.03)
    np.testing.assert_allclose(strokes[3], strokes[0][[0, 1, 0, 1]])  # the undone 4th: a dot


def test_a_curve_sender_sends_freehand_paths_and_the_server_fits_them(tmp_path):
    run = write_run(tmp_path / "run", image_size=32, lines=4, primitive="cubic",
                    stroke_opacity=True)  # fmt: skip
    args = ["--sender", "human", "--receiver", str(run), "--stroke-format", "cubic+opacity"]
    web, client = study(tmp_path, *args)
    token = join(client)
    assert client.get(f"/api/participants/{token}").json["stroke_format"] == "cubic+opacity"
    control = np.array([(-0.8, 0.6), (-0.3, -0.9), (0.5, 0.9), (0.7, -0.4)])
    t = np.linspace(0, 1, 50)[:, None]
    s_curve = sum(
        c * w
        for c, w in zip(
            control, [(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], strict=True
        )
    )
    paths = [s_curve.round(4).tolist(), [[0.2, -0.3]]]  # a curve and a click
    path = f"/api/participants/{token}/games/0"
    wrong = client.post(path, json={"strokes": [[0, 0, 1, 1]], "response_time": 1.0})
    assert wrong.status_code == 400 and "9 numbers" in wrong.json["error"]
    assert "cubic+opacity" in wrong.json["error"]  # a line for a curve game: refused, explained
    reply = client.post(path, json={"paths": paths, "response_time": 3.0})
    assert reply.status_code == 200, reply.json
    web.close()
    (game,) = rows(tmp_path / "study.sqlite")
    strokes = np.array(json.loads(game["strokes"]))
    assert game["stroke_format"] == "cubic+opacity" and strokes.shape == (4, 9)
    with pytest.raises(ValueError, match="the env's strokes are cubic, these agents draw"):
        study(tmp_path / "other", "--sender", "human", "--receiver", str(run),
              "--stroke-format", "cubic")  # fmt: skip
    np.testing.assert_allclose(strokes[0, :8], control.ravel(), atol=1e-3)  # the fitted curve
    np.testing.assert_allclose(strokes[1, :8], [0.2, -0.3] * 4)  # the click: a point
    np.testing.assert_array_equal(strokes[:, 8], [1, 1, 0, 0])  # the rest left out


def test_line_paths_become_polylines_leaving_a_line_for_each_later_drag(tmp_path, run):
    web, client = study(tmp_path, "--sender", "human", "--receiver", str(run))
    token = join(client)
    zigzag = [[x, -0.5 + (i % 2)] for i, x in enumerate(np.linspace(-0.9, 0.9, 7).tolist())]
    path = f"/api/participants/{token}/games/0"
    bad = client.post(path, json={"paths": [[[0, 2]]], "response_time": 1.0})
    assert bad.status_code == 400 and "leaves the canvas" in bad.json["error"]
    too_many = client.post(path, json={"paths": [[[0, 0]]] * 5, "response_time": 1.0})
    assert too_many.status_code == 400 and "1 to 4 drags" in too_many.json["error"]
    answer = {"paths": [zigzag, [[0.5, 0.5], [0.9, 0.9]]], "response_time": 1.0}
    assert client.post(path, json=answer).status_code == 200
    web.close()
    (game,) = rows(tmp_path / "study.sqlite")
    strokes = np.array(json.loads(game["strokes"]))
    assert game["stroke_format"] == "line" and "stroke_format" not in game["setting"]
    np.testing.assert_allclose(strokes[:3, :2], zigzag[:3])  # 6 corners cut to 3 lines
    np.testing.assert_allclose(strokes[2, 2:], zigzag[-1])
    np.testing.assert_allclose(strokes[3], [0.5, 0.5, 0.9, 0.9])  # the second drag kept


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt install chromium)")
def test_a_real_browser_draws_a_freehand_curve(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    run = write_run(tmp_path / "run", image_size=32, lines=4, primitive="cubic",
                    stroke_opacity=True)  # fmt: skip
    database = tmp_path / "study.sqlite"
    argv = ["--sender", "human", "--receiver", str(run), "--stroke-format", "cubic+opacity"]
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        with serving([*argv, "--games", "2", "--db", str(database)]) as (url, _):
            page.goto(url)
            page.click("#start")
            page.wait_for_selector("#canvas")
            box = page.locator("#canvas").bounding_box()
            at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])  # noqa: E731
            page.mouse.move(*at(0.2, 0.7))
            page.mouse.down()
            for angle in np.linspace(np.pi, 2 * np.pi, 30)[1:]:  # half a circle, over the top
                page.mouse.move(*at(0.5 + 0.3 * np.cos(angle), 0.7 + 0.3 * np.sin(angle)))
            page.mouse.up()
            assert page.inner_text("#count") == "1 of 4 curves"
            page.click("#send")
            page.wait_for_selector("#feedback")
        browser.close()
    assert errors == []
    (game,) = rows(database)
    strokes = np.array(json.loads(game["strokes"]))
    assert game["stroke_format"] == "cubic+opacity" and strokes.shape == (4, 9)
    np.testing.assert_array_equal(strokes[:, 8], [1, 0, 0, 0])
    size = 32
    unit = lambda f: 2 * (f * size - 0.5) / (size - 1) - 1  # noqa: E731
    np.testing.assert_allclose(
        strokes[0, [0, 1, 6, 7]], [unit(0.2), unit(0.7), unit(0.8), unit(0.7)], atol=0.03
    )
    # a half circle's cubic: both controls above the ends, about 4/3 of the radius up
    assert strokes[0, 3] < unit(0.7) - 0.5 and strokes[0, 5] < unit(0.7) - 0.5
