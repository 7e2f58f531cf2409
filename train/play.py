"""Play the sketching game with people in the loop, and report the human study.

    python -m train.play --sender runs/perceptual --receiver human \\
        --participant alice --games 30 --no-feedback
    python -m train.play --report runs/play/study.sqlite --csv study.csv

Each player is ``human``, ``random`` (seeded) or a trained agent: a checkpoint file or a
run folder of ``train.selfplay``, whose training game is then the default game.
``--stroke-format`` (``line``, ``quadratic``, ``cubic``, with options such as
``cubic+opacity``; see ``sketchenv.strokes``) is what a stroke is: a human sender's drag
becomes a polyline of lines or one curve, and the database stores the format with each
game (a setting with curves is not the same setting as with lines).
Every game is written to SQLite as soon as it ends, so a kill loses at most the game in
progress; running the same command again continues at the next game. Game ``i`` of a
session depends only on ``(--seed, i)``, so every participant with the same seed sees the
same games. Esc or closing the window stops cleanly.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import sketchenv
from sketchenv.human import GameWindow, HumanReceiver, HumanSender, PlayerQuit
from sketchenv.strokes import StrokeFormat
from train.flags import run_command
from train.study import GameRecord, StudyDB, format_report, load_rows, summarize, write_csv

SENDER, RECEIVER = "sender_0", "receiver_0"
PLAYERS = ("human", "random", None)  # anything else names a checkpoint
DEFAULTS = {  # the game when neither a flag nor a checkpoint says otherwise
    "game": "original",
    "dataset": "shapes",
    "root": "./data",
    "image_size": None,
    "n_distractors": None,
    "n_lines": 20,
    "stroke_format": "line",
}
Policy = Callable[[dict, str], object]


class RandomPolicy:
    """Uniform random actions from the env's action spaces; :meth:`seed` it for each game."""

    def __init__(self, env) -> None:
        self.spaces = {agent: env.action_space(agent) for agent in env.possible_agents}
        self.rng = np.random.default_rng(0)

    def seed(self, seed: int | tuple[int, ...]) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, observation: dict, agent: str):
        space = self.spaces[agent]
        if hasattr(space, "n"):  # Discrete
            return int(space.start + self.rng.integers(space.n))
        return self.rng.uniform(space.low, space.high).astype(space.dtype)


def game_seed(seed: int, index: int) -> int:
    """The env seed of game ``index`` of a session: independent streams per (seed, index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def checkpoint_identity(file: str | Path) -> str:
    """``checkpoint:<file name>#<sha256 prefix>``: stable when the file moves, changes with it."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"checkpoint:{Path(file).name}#{digest.hexdigest()[:12]}"


def load_agent(path: str, device: str | None, strict: bool) -> Policy:
    """A trained agent as an env policy (acts for both sender_0 and receiver_0); with
    ``strict=False`` its receiver may play with another number of candidates."""
    from agents.policies import AgentPolicy  # torch models load only when a checkpoint is used

    return AgentPolicy.from_checkpoint(path, device=device, strict=strict)


def compared_agent(args: argparse.Namespace) -> str | None:
    """The checkpoint whose receiver also answers each game: ``--compare``, else the
    sender's checkpoint when the receiver is a person or random."""
    if args.compare is not None or args.receiver not in PLAYERS:
        return args.compare
    return None if args.sender in PLAYERS else args.sender


def load_agents(args: argparse.Namespace) -> dict[str, Policy]:
    """Every checkpoint the session uses, loaded once, in the order sender, receiver, compare."""
    specs = [args.sender, args.receiver, compared_agent(args)]
    strict = args.n_distractors is None  # people may play with fewer candidates than trained
    return {
        spec: load_agent(spec, args.device, strict)
        for spec in dict.fromkeys(specs)
        if spec not in PLAYERS
    }


def game_options(args: argparse.Namespace, agents: dict[str, Policy]) -> dict:
    """The env's options: the flags given, else the first agent's training game, else defaults."""
    first = next(iter(agents.values()), None)
    trained = first.env_options() if hasattr(first, "env_options") else {}
    options = {**trained, "split": args.split}
    for key, default in DEFAULTS.items():
        flag = getattr(args, key)
        options[key] = flag if flag is not None else trained.get(key, default)
    options["stroke_format"] = str(StrokeFormat.parse(options["stroke_format"]))
    return options


def training_loss(agent: Policy) -> str | None:
    """The loss an agent was trained with, as the paper's tables name it (None if unknown)."""
    config = getattr(agent, "config", None)
    if config is None:
        return None
    coef = config.perceptual_coef or 0.0
    return f"{config.loss} + {coef:g} perceptual" if coef > 0 else config.loss


def player_identity(spec: str, agents: dict[str, Policy]) -> str:
    """``human``, ``random``, or the identity of the checkpoint file the agent was read from
    (a run folder resolves to its best or last checkpoint)."""
    if spec in PLAYERS:
        return spec
    return checkpoint_identity(getattr(agents[spec], "path", None) or spec)


def game_facts(env) -> dict:
    """Dataset ids and labels of the game the env just played (for the record)."""
    batch = env.unwrapped.current_game  # the one-game GameBatch (B = G = 1)
    return {
        "sender_id": int(batch.sender_ids[0, 0]),
        "sender_label": int(batch.sender_labels[0, 0]),
        "candidate_ids": [int(i) for i in batch.candidate_ids[0]],
        "candidate_labels": [int(i) for i in batch.candidate_labels[0]],
    }


def play_game(
    env,
    sender: Policy,
    receiver: Policy,
    *,
    seed: int,
    compare: Policy | None = None,
    window: GameWindow | None = None,
    status: dict | None = None,
) -> tuple[dict, dict]:
    """Play one game from ``env.reset(seed=seed)``; return its record fields and final state.

    ``compare`` (an agent policy) also chooses on the receiver's observation, so a human
    receiver's rate can be set against the agent's on the very same sketches. With a
    ``window``, each phase is shown with ``status`` keys (game number, score) merged in,
    and two people sharing it get a hand-over screen once the sketch is sent.
    """
    observations, _ = env.reset(seed=seed)
    if window is not None:
        window.show({**env.render_state(), **(status or {})})
    strokes = np.asarray(sender(observations[SENDER], SENDER), dtype=np.float32)
    observations, *_ = env.step({SENDER: strokes, RECEIVER: 0})  # receiver idle in phase 0
    if (
        window is not None
        and isinstance(sender, HumanSender)
        and isinstance(receiver, HumanReceiver)
    ):
        window.message("Sketch sent", ["Receiver: press a key or click when you are ready."])
    if window is not None:
        window.show({**env.render_state(), **(status or {})})
    agent_choice = None if compare is None else int(compare(observations[RECEIVER], RECEIVER))
    start = time.perf_counter()
    choice = int(receiver(observations[RECEIVER], RECEIVER))
    response_time = time.perf_counter() - start
    env.step({SENDER: np.zeros_like(strokes), RECEIVER: choice})
    state = env.render_state()
    if state["choice"] != choice or state["target"] is None:
        raise RuntimeError("the env did not record the receiver's choice; is it a sketchenv env?")
    game = {
        "target": int(state["target"]),
        "choice": choice,
        "agent_choice": agent_choice,
        "response_time": response_time,
        "strokes": strokes.tolist(),
        **game_facts(env),
    }
    return game, state


def agent_player(spec: str, env, agents: dict[str, Policy]) -> Policy:
    """A player that is not a person: ``random`` (seed it per game) or a loaded checkpoint."""
    return RandomPolicy(env) if spec == "random" else agents[spec]


def make_players(
    args: argparse.Namespace,
    env,
    window: GameWindow | None,
    agents: dict[str, Policy],
    n_lines: int,
    stroke_format: str = "line",
) -> tuple[Policy, Policy, Policy | None, str | None]:
    """The sender, the receiver, the compared agent receiver (if any) and that agent's name.

    When the receiver is itself a checkpoint (and no ``--compare`` is given), it is the
    agent of the comparison: its own choices fill the agent column.
    """

    def make(spec: str, role: str) -> Policy:
        if spec == "human" and role == SENDER:
            return HumanSender(window, n_lines=n_lines, stroke_format=stroke_format)
        if spec == "human":
            return HumanReceiver(window)
        return agent_player(spec, env, agents)

    sender, receiver = make(args.sender, SENDER), make(args.receiver, RECEIVER)
    return sender, receiver, *comparison(args, agents)


def comparison(
    args: argparse.Namespace, agents: dict[str, Policy]
) -> tuple[Policy | None, str | None]:
    """The agent receiver that also answers each game (None when the receiver is itself
    that agent, or there is none) and the name of the agent in the record."""
    compare = compared_agent(args)
    if compare is not None:
        return agents[compare], player_identity(compare, agents)
    if args.receiver not in PLAYERS:
        return None, player_identity(args.receiver, agents)
    return None, None


def add_session_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a study session, shared by ``train.play`` and ``train.serve``."""
    parser.add_argument("--sender", default="random", help="CHECKPOINT | human | random")
    parser.add_argument("--receiver", default="human", help="CHECKPOINT | human | random")
    parser.add_argument(
        "--compare",
        default=None,
        help="checkpoint whose receiver also answers every game, for the report's agent "
        "column (default: the sender's checkpoint when the receiver is not an agent)",
    )
    parser.add_argument(
        "--game",
        default=None,
        choices=("original", "oo-same", "oo-different"),
        help="default: the checkpoint's, else original",
    )
    parser.add_argument("--dataset", default=None, help="default: the checkpoint's, else shapes")
    parser.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="default: test"
    )
    parser.add_argument("--root", default=None, help="dataset folder (default ./data)")
    parser.add_argument("--n-distractors", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument(
        "--n-lines", type=int, default=None, help="default: the checkpoint's, else 20"
    )
    parser.add_argument(
        "--stroke-format",
        default=None,
        help="line, quadratic or cubic, with +width, +opacity, +colour options, e.g. "
        "cubic+opacity (default: the checkpoint's, else line)",
    )
    parser.add_argument("--games", type=int, default=30, help="games per session (default 30)")
    parser.add_argument(
        "--seed", type=int, default=0, help="the session's games depend only on it (default 0)"
    )
    parser.add_argument(
        "--feedback",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show the right answer and the score after each game (the paper ran both)",
    )
    parser.add_argument(
        "--output", default="runs/play", help="folder for the database (default runs/play)"
    )
    parser.add_argument("--db", default=None, help="SQLite file (default OUTPUT/study.sqlite)")
    parser.add_argument(
        "--device", default=None, help="device for checkpoints: auto, cpu, cuda:N (default cpu)"
    )


def check_session_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse session flags that cannot work, naming the flag (``parser.error``)."""
    if args.games < 1:
        parser.error(f"--games must be >= 1, got {args.games}")
    if not 0 <= args.seed < 2**63:
        parser.error(f"--seed must be >= 0 and below 2**63, got {args.seed}")
    if args.n_lines is not None and args.n_lines < 1:
        parser.error(f"--n-lines must be >= 1, got {args.n_lines}")
    if args.stroke_format is not None:
        try:
            StrokeFormat.parse(args.stroke_format)
        except ValueError as err:
            parser.error(f"--stroke-format: {err}")
    for option in ("sender", "receiver", "compare"):
        spec = getattr(args, option)
        if spec not in PLAYERS and not Path(spec).exists():
            parser.error(
                f"--{option} {spec!r} is neither 'human', 'random' nor a checkpoint file "
                "or run folder"
            )
    if args.compare in ("human", "random"):
        parser.error("--compare takes a checkpoint (an agent receiver), not a person or random")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train.play",
        description="Play the sketching game with people in the loop; record and report a study.",
    )
    add_session_flags(parser)
    parser.add_argument("--participant", default=None, help="name or code of the player")
    parser.add_argument(
        "--window-size",
        type=int,
        nargs=2,
        default=(1200, 720),
        metavar=("W", "H"),
        help="window pixels (default 1200 720; bigger shows 100 candidates larger)",
    )
    parser.add_argument("--report", metavar="DB", default=None, help="print the study report")
    parser.add_argument("--csv", metavar="FILE", default=None, help="with --report: export CSV")
    args = parser.parse_args(argv)
    if args.csv and not args.report:
        parser.error("--csv goes with --report DB")
    check_session_args(parser, args)
    if min(args.window_size) < 320:
        parser.error(f"--window-size must be at least 320 320, got {args.window_size}")
    humans = "human" in (args.sender, args.receiver)
    if args.report is None and humans and not args.participant:
        parser.error("name the player with --participant NAME (it keys the record and resuming)")
    return args


def report(path: str, csv_path: str | None = None) -> str:
    """The study report of the database at ``path`` (and a CSV export when asked)."""
    summary = summarize(load_rows(path))
    text = format_report(summary)
    if csv_path:
        write_csv(summary, csv_path)
        text += f"\n\nwrote {len(summary)} settings to {Path(csv_path).resolve()}"
    return text


def session_setting(args: argparse.Namespace, options: dict, agents: dict[str, Policy]) -> dict:
    """What makes two sessions comparable: the game, the data, the strokes and who plays
    how (a ``line`` stroke format is left out, so line sessions keep their old keys)."""
    line = options.get("stroke_format", "line") == "line"
    left_out = {"root", "stroke_format"} if line else {"root"}
    return {
        **{key: value for key, value in options.items() if key not in left_out},
        "sender": player_identity(args.sender, agents),
        "sender_loss": training_loss(agents[args.sender]) if args.sender in agents else None,
        "receiver": player_identity(args.receiver, agents),
        "feedback": args.feedback,
    }


def run(args: argparse.Namespace) -> int:
    """Play the session's remaining games, recording each as it ends; returns how many."""
    db_path = Path(args.db) if args.db else Path(args.output) / "study.sqlite"
    participant = args.participant or "agents"
    agents = load_agents(args)
    options = game_options(args, agents)
    setting = session_setting(args, options, agents)
    db = StudyDB(db_path)
    done = db.played(participant, setting, args.seed)
    todo = [i for i in range(args.games) if i not in done]
    if not todo:
        print(f"{participant} has finished all {args.games} games of this setting ({db_path}).")
        db.close()
        return 0
    env = sketchenv.parallel_env(**options)
    for agent in agents.values():
        if hasattr(agent, "check_env"):
            agent.check_env(env)  # a clear error when the agents cannot play this game
    window = None
    if "human" in (args.sender, args.receiver):
        window = GameWindow(tuple(args.window_size), feedback=args.feedback)
    sender, receiver, compare, agent = make_players(
        args, env, window, agents, options["n_lines"], options["stroke_format"]
    )
    wins = db.wins(participant, setting, args.seed)
    played = 0
    try:
        if window is not None:
            title = f"Hello {participant}: {len(todo)} games to play"
            lines = _instructions(args, options["n_lines"], len(done), options["stroke_format"])
            window.message(title, lines)
        for index in todo:
            for role, policy in enumerate((sender, receiver)):
                if isinstance(policy, RandomPolicy):
                    policy.seed((args.seed, index, role))
            status = {"episode": index, "wins": wins, "n_games": args.games}
            game, state = play_game(
                env,
                sender,
                receiver,
                seed=game_seed(args.seed, index),
                compare=compare,
                window=window,
                status=status,
            )
            if agent is not None and compare is None:  # the receiver is the agent
                game["agent_choice"] = game["choice"]
            record = GameRecord(participant, setting, args.seed, index, agent=agent, **game)
            if not db.record(record):
                print(f"game {index + 1}: already recorded by another session of {participant}")
                continue
            played += 1
            wins += int(game["choice"] == game["target"])
            print(
                f"game {index + 1}/{args.games}: chose {game['choice']}, target "
                f"{game['target']} ({game['response_time']:.1f} s)",
                flush=True,
            )
            if window is not None and args.feedback:
                window.show({**state, **status, "wins": wins}, wait=True)
            elif window is not None:
                window.message(
                    f"Game {index + 1} of {args.games} done", ["Next game: press a key."]
                )
        if window is not None:
            window.message("Thank you!", [f"All {args.games} games are played and saved."])
    except (PlayerQuit, KeyboardInterrupt):
        left = args.games - len(done) - played
        print(f"stopped: {played} games recorded now, {left} left; the same command continues.")
    finally:
        for player in (sender, receiver):
            if isinstance(player, HumanSender | HumanReceiver):
                player.close()
        if window is not None:
            window.close()
        env.close()
        db.close()
    print(f"recorded in {db_path}")
    return played


def _instructions(
    args: argparse.Namespace, n_lines: int, done: int, stroke_format: str = "line"
) -> list[str]:
    lines = []
    if args.receiver == "human":
        lines.append("You see a sketch and some images: pick the image the sketch shows.")
        lines.append("Click it, or type its number and press Enter.")
    if args.sender == "human" and StrokeFormat.parse(stroke_format).primitive == "line":
        lines.append(f"You see an image: draw it with at most {n_lines} straight lines.")
        lines.append("Drag freehand: each drag becomes lines along its path (corners kept).")
    elif args.sender == "human":
        lines.append(f"You see an image: draw it with at most {n_lines} curves.")
        lines.append("Drag freehand: each drag becomes one smooth curve along its path.")
    if args.sender == "human":
        lines.append("Backspace / Ctrl-Z / right click undoes a drag, Enter sends.")
    lines.append(
        "After each game you see the right answer." if args.feedback else "There is no feedback."
    )
    if done:
        lines.append(f"Continuing after the {done} games already played.")
    lines.append("Esc stops at any time (finished games are kept). Press a key to start.")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        print(report(args.report, args.csv))
        return
    run(args)


if __name__ == "__main__":
    run_command(main, "python -m train.play")
