"""Settings as dataclasses: one source for defaults, `--help`, and the JSON saved with a model.

`add_arguments(parser, SomeConfig)` turns every field into a `--flag` whose help text is the
field's `help` metadata and whose default is the field's default; `from_args` builds the
dataclass back from parsed arguments; `save`/`load` write it beside a trained model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from shared import files

T = TypeVar("T")


def setting(default: Any, help: str, choices=None, section: str | None = None) -> Any:
    """A dataclass field with a help text (and optional choices) for the command line.

    `section` names the `--help` group the flag is listed in (see `SECTIONS`).
    """
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "section": section}
    )


# The order of the `--help` groups; settings without a section come first, as "Run settings".
SECTIONS = ("Data", "Encoder", "Decoder", "Training", "Evaluation")


def parse_bool(text: str) -> bool:
    """`true`/`false` (also yes/no, on/off, 1/0) for command-line flags such as `--share false`."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One `--flag` per field, in groups by section in the order of `SECTIONS` (a section not
    named there comes last); within a group, in the order the fields are declared."""
    hints = get_type_hints(config_class)
    order = [None, *SECTIONS]

    def rank(field) -> int:
        section = field.metadata.get("section")
        return order.index(section) if section in order else len(order)

    groups = {}
    for field in sorted(dataclasses.fields(config_class), key=rank):
        section = field.metadata.get("section")
        if section not in groups:
            title = f"{section or 'Run'} settings"
            groups[section] = parser.add_argument_group(title)
        kind = hints[field.name]
        parse = {bool: parse_bool, int: int, float: float}.get(kind, str)
        if kind == (float | None):
            parse = float
        elif kind == (int | None):
            parse = int
        groups[section].add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=parse,
            default=field.default,
            choices=field.metadata.get("choices"),
            help=f"{field.metadata.get('help', '')} (default: {field.default})",
        )


def from_args(config_class: type[T], args: argparse.Namespace) -> T:
    names = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in vars(args).items() if k in names})


def save(config, path: str | os.PathLike) -> None:
    """Writes `config` as JSON, atomically (`shared.files.write_text`)."""
    files.write_text(path, json.dumps(dataclasses.asdict(config), indent=2, ensure_ascii=False))


def load(config_class: type[T], path: str | os.PathLike) -> T:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; was it written by another version?")
    return config_class(**data)
