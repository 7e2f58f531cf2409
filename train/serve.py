"""Serve a human study in the web browser: send the link, participants play from anywhere.

    python -m train.serve --sender runs/perceptual --receiver human --games 30 --no-feedback
    python -m train.serve --sender human --receiver runs/perceptual --port 8080

The flags are ``train.play``'s (one of ``--sender``/``--receiver`` is ``human``: the
participant), and the games go into the same study database, so
``python -m train.play --report runs/play/study.sqlite`` reports both. Each visitor of the
link joins as a new participant with an unguessable token kept in the page's address and
the browser's storage: reloading, or coming back later, continues at their next game.
The server binds to 127.0.0.1; see the README for putting it behind a reverse proxy.
"""

from __future__ import annotations

import argparse
from importlib import resources

try:
    import waitress
    from flask import Flask, jsonify, request, send_file
    from werkzeug.exceptions import HTTPException
except ImportError as missing:  # the optional extra
    raise SystemExit(
        f"python -m train.serve: error: the web study needs Flask and waitress ({missing}): "
        "pip install 'sketchenv[web]'"
    ) from missing

from train.flags import run_command
from train.play import add_session_flags, check_session_args
from train.webstudy import StudyError, WebStudy

MAX_REQUEST_BYTES = 64 * 1024  # an answer is under 2 KB; anything far bigger is refused
PAGE_FILES = ("index.html", "study.js", "study.css")
CONTENT_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
SECURITY_HEADERS = {
    # The page runs only its own script and shows only its own pictures (data: URLs).
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the address holds the participant's token
    "Cache-Control": "no-store",
}


def make_app(study: WebStudy) -> Flask:
    """The HTTP face of ``study``: the page, and a small JSON API the page calls."""
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES

    @app.get("/")
    def index():
        return page_file("index.html")

    @app.get("/static/<name>")
    def static_file(name: str):
        if name not in PAGE_FILES:  # a fixed list: no path is ever built from the request
            return error(404, f"no file {name!r}")
        return page_file(name)

    @app.get("/api/study")
    def describe():
        return jsonify(study.description())

    @app.post("/api/join")
    def join():
        return jsonify({"token": study.join()}), 201

    @app.get("/api/participants/<token>")
    def progress(token: str):
        return jsonify(study.progress(token))

    @app.get("/api/participants/<token>/games/<int:index>")
    def game(token: str, index: int):
        return jsonify(study.page(token, index))

    @app.post("/api/participants/<token>/games/<int:index>")
    def answer(token: str, index: int):
        if not request.is_json:
            return error(415, "send the answer as JSON (Content-Type: application/json)")
        return jsonify(study.answer(token, index, request.get_json()))

    @app.errorhandler(StudyError)
    def refused(err: StudyError):
        return error(err.status, str(err))

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        if err.code == 400:  # request.get_json() on a body that is not JSON
            return error(400, "the request body is not valid JSON")
        if err.code == 413:
            return error(413, f"the request is larger than {MAX_REQUEST_BYTES} bytes")
        return error(err.code or 500, err.description or err.name)

    @app.after_request
    def secure(response):
        response.headers.update(SECURITY_HEADERS)
        return response

    return app


def error(status: int, message: str):
    """A JSON error the page shows as it is."""
    return jsonify({"error": message}), status


def page_file(name: str):
    """One of the page's files, shipped inside the package (no build step, no CDN)."""
    path = resources.files("train") / "web" / name
    return send_file(path.open("rb"), mimetype=CONTENT_TYPES[name.rsplit(".", 1)[1]])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train.serve",
        description="Serve a human study over HTTP: every visitor of the link is a participant.",
    )
    add_session_flags(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="participant n plays the games of seed SEED + n %% SEEDS (default 1: everyone "
        "plays the same games)",
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="requests served at once (default 8)"
    )
    args = parser.parse_args(argv)
    check_session_args(parser, args)
    if [args.sender, args.receiver].count("human") != 1:
        parser.error(
            "a web study needs exactly one human player: --receiver human with an agent or "
            "random --sender, or --sender human with an agent or random --receiver"
        )
    if not 0 <= args.port < 2**16:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    for flag in ("seeds", "workers"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.seed + args.seeds > 2**63:
        parser.error("--seed + --seeds must stay below 2**63")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    study = WebStudy(args)
    try:
        try:
            server = waitress.create_server(
                make_app(study),
                host=args.host,
                port=args.port,
                threads=args.workers,
                max_request_body_size=MAX_REQUEST_BYTES,
                ident="sketchenv",
            )
        except OSError as err:
            raise OSError(
                f"cannot serve on {args.host}:{args.port} ({err}): pick another --port"
            ) from err
        print(
            f"serving the study at http://{args.host}:{args.port}/ ({args.games} games per "
            f"participant, {study.description()['role']} role); games go to {study.db.path}",
            flush=True,
        )
        server.run()
    finally:
        study.close()


if __name__ == "__main__":
    run_command(main, "python -m train.serve")
