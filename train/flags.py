"""Command-line flags generated from a config dataclass: one source for names, types,
defaults, help and choices.

Each field becomes ``--field-name``; its type gives the parser (``bool`` fields get
``--x/--no-x``, ``list[int]`` fields take several values, ``X | None`` takes an ``X``),
``field(metadata={"help": ..., "choices": ...})`` gives the help and the choices, and
``metadata={"group": ...}`` the section of ``--help``. Unset flags are left out of the
parsed namespace (``argparse.SUPPRESS``), so a config file can fill them.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


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
