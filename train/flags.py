"""What the ``train.*`` commands share: flags generated from a config dataclass (one
source for names, types, defaults, help and choices), one-line errors, and where the
experiment configs are.

Each field becomes ``--field-name``; its type gives the parser (``bool`` fields get
``--x/--no-x``, ``list[int]`` fields take several values, ``X | None`` takes an ``X``),
``field(metadata={"help": ..., "choices": ...})`` gives the help and the choices, and
``metadata={"group": ...}`` the section of ``--help``. Unset flags are left out of the
parsed namespace (``argparse.SUPPRESS``), so a config file can fill them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sqlite3
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# What a user's input or machine can cause (a bad value, a missing or damaged file, a
# full disk, a loss that diverges at the chosen learning rate); anything else is a bug
# and keeps its traceback.
INPUT_ERRORS = (ValueError, TypeError, OSError, sqlite3.Error, FloatingPointError)

_HERE = Path(__file__).resolve().parent
EXPERIMENTS_DIR = _HERE / "tables" if (_HERE / "tables").is_dir() else _HERE.parent / "experiments"
"""The experiment configs: ``experiments/`` in a clone of the repository; the same files
shipped inside the package as ``train/tables/`` when it is installed from a wheel."""


def find_config(path: str | Path) -> Path:
    """``path`` as given when it exists; else, for ``experiments/...`` (as the README writes
    them), the shipped copy, so ``--config experiments/table1/original.toml`` works from
    any folder once the package is installed."""
    path = Path(path)
    parts = path.parts
    if path.exists() or not parts or parts[0] != "experiments":
        return path
    shipped = EXPERIMENTS_DIR.joinpath(*parts[1:])
    return shipped if shipped.exists() else path


def run_command(main: Callable[[Sequence[str]], Any], prog: str) -> None:
    """Call ``main(sys.argv[1:])``; an input error prints ``prog: error: ...`` on one line
    and exits with status 2, Ctrl-C exits with 130. ``--debug`` (or ``SKETCHENV_DEBUG=1``)
    keeps the traceback instead."""
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("SKETCHENV_DEBUG") == "1"
    try:
        main([a for a in argv if a != "--debug"])
    except INPUT_ERRORS as error:
        if debug:
            raise
        sys.stdout.flush()
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)


def add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """Add one flag per field of the dataclass ``config_class`` to ``parser``."""
    hints = typing.get_type_hints(config_class)
    defaults = config_class()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(config_class):
        meta = f.metadata
        name = meta.get("group", "options")
        group = groups.get(name) or groups.setdefault(name, parser.add_argument_group(name))
        default = getattr(defaults, f.name)
        help_text = meta.get("help", "")
        shown = meta.get("default_help", default)
        help_text = f"{help_text} [{shown}]" if shown is not None else help_text
        flag = "--" + f.name.replace("_", "-")
        kind, many = _base_type(hints[f.name])
        options: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
            if many:
                options["nargs"] = "+"
            if "choices" in meta:
                options["choices"] = meta["choices"]
            options["metavar"] = meta.get("metavar")
        group.add_argument(flag, **options)


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the element type, whether it is a list) of ``int``, ``int | None``, ``list[int]``..."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return args[0], True
    return hint, False
