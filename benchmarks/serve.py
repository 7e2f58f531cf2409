"""Load on the web study: N simulated participants play at once against ``train.serve``.

Starts ``python -m train.serve`` on the loopback address (a fresh database in a temporary
folder), then N threads each join and play every game as a receiver would: ask for the
game, answer it, repeat. Prints requests/s and the latency of a game round trip (ask +
answer) at the median and 95th percentile, and fails if any request errs or any game is
missing from the database afterwards.

    python benchmarks/serve.py [--participants 50] [--games 10] [--sender random|RUN] [--seeds 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(argv: list[str], timeout: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m train.serve ARGV`` on a free loopback port: yields (base URL, process)
    once it answers, and stops it (if still running) on exit. Its output goes to a file
    (a pipe nobody reads would fill up and stall the server under load)."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "train.serve", *argv, "--port", str(port)],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    output.seek(0)
                    raise RuntimeError(f"train.serve exited: {output.read()}")
                with contextlib.suppress(OSError):
                    call(url, "api/study")
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"train.serve did not answer within {timeout:g} s")
                time.sleep(0.2)
            yield url, process
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(30)


def call(url: str, path: str, body: object = None) -> tuple[int, dict]:
    """One API request (POST with a JSON body when ``body`` is given): (status, reply)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, method="GET" if data is None else "POST"
    )
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def play_receiver(url: str, seed: int) -> tuple[str, list[float]]:
    """Join and play every game as a receiver choosing at random; (token, round trips in s).
    Raises on any refused request."""
    rng = np.random.default_rng(seed)
    status, reply = call(url, "api/join", {})
    if status != 201:
        raise RuntimeError(f"join: {status} {reply}")
    token, latencies = reply["token"], []
    while True:
        status, progress = call(url, f"api/participants/{token}")
        if status != 200:
            raise RuntimeError(f"progress: {status} {progress}")
        index = progress["next_game"]
        if index is None:
            return token, latencies
        start = time.perf_counter()
        status, game = call(url, f"api/participants/{token}/games/{index}")
        if status != 200:
            raise RuntimeError(f"game {index}: {status} {game}")
        answer = {"choice": int(rng.integers(len(game["candidates"]))), "response_time": 1.0}
        status, reply = call(url, f"api/participants/{token}/games/{index}", answer)
        if status != 200:
            raise RuntimeError(f"answer {index}: {status} {reply}")
        latencies.append(time.perf_counter() - start)


def load(url: str, participants: int) -> dict:
    """Every participant in its own thread at once; counts, errors and timings."""
    results: list[tuple[str, list[float]]] = []
    errors: list[str] = []

    def participant(seed: int) -> None:
        try:
            results.append(play_receiver(url, seed))
        except Exception as err:  # collected and reported: the load must show every failure
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=participant, args=(i,)) for i in range(participants)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    latencies = np.array([t for _, times in results for t in times])
    games = len(latencies)
    requests = participants * 2 + games * 3  # join + last progress, then 3 per game
    return {
        "tokens": [token for token, _ in results],
        "errors": errors,
        "games": games,
        "seconds": seconds,
        "requests_per_s": requests / seconds,
        "median_ms": 1000 * float(np.median(latencies)) if games else float("nan"),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)) if games else float("nan"),
    }


def stored_games(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute("SELECT COUNT(*) FROM games").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=50)
    parser.add_argument("--games", type=int, default=10, help="games per participant")
    parser.add_argument("--sender", default="random", help="random, or a checkpoint / run")
    parser.add_argument("--workers", type=int, default=8, help="the server's --workers")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="the server's --seeds (1: everyone plays the same games)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "study.sqlite"
        argv = ["--sender", args.sender, "--receiver", "human", "--games", str(args.games)]
        argv += ["--db", str(db), "--workers", str(args.workers), "--seeds", str(args.seeds)]
        with serving(argv) as (url, _):
            result = load(url, args.participants)
        stored = stored_games(db)
    expected = args.participants * args.games
    print(
        f"{args.participants} participants x {args.games} games (sender {args.sender}, "
        f"{args.workers} server workers, {args.seeds} seeds): {result['games']} games in {result['seconds']:.1f} s, "
        f"{result['requests_per_s']:.0f} requests/s; game round trip median "
        f"{result['median_ms']:.0f} ms, 95th percentile {result['p95_ms']:.0f} ms; "
        f"{stored} of {expected} games in the database, {len(result['errors'])} errors"
    )
    for error in result["errors"][:5]:
        print("  error:", error)
    if result["errors"] or stored != expected:
        sys.exit(1)


if __name__ == "__main__":
    main()
