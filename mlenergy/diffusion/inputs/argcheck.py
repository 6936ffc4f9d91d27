"""Command lines read strictly, and refused in one line.

tyro reports a bad flag in a box of a dozen lines and lets a repeated flag's last value win; a
benchmark whose flags decide what is measured refuses both. Empty values for paths are refused
too (an empty path is the current directory).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")

# Flags whose value names a place: empty means "here", which nobody means.
PATH_FLAGS = ("--workload.base_dir", "--workload.prompts_file", "--workload.prompt_cache_dir",
              "--workload.model_id", "--reference_run")


class ArgvError(ValueError):
    pass


def _flag_name(token: str) -> str | None:
    if not token.startswith("--") or token == "--":
        return None
    return token.split("=", 1)[0]


def _setting(name: str) -> str:
    """--use_x and --no_use_x set one thing, as do --workload.x and --workload.no_x."""
    head, _, leaf = name[2:].rpartition(".")
    leaf = leaf[3:] if leaf.startswith("no_") else leaf
    return f"{head}.{leaf}" if head else leaf


def check_argv(argv: Sequence[str], aliases: Mapping[str, str] | None = None,
               repeatable: Sequence[str] = ()) -> None:
    """Refuse a setting given twice (under either of its spellings: `aliases` maps another
    spelling to the canonical one; flags in `repeatable` add a value each time) and an empty
    path."""
    aliases = aliases or {}
    seen: dict[str, str] = {}
    for index, token in enumerate(argv):
        name = _flag_name(token)
        if name is None or name in ("--help", "-h", *repeatable):
            continue
        setting = _setting(aliases.get(name, name))
        if setting in seen:
            before = seen[setting].split("=", 1)[0]
            if before != name and (name in aliases or before in aliases):
                canonical = aliases.get(name, name)
                raise ArgvError(f"{before} and {name} are one setting (spelled {canonical}); "
                                "give it once")
            raise ArgvError(f"{token} is given twice ({seen[setting]} before it); give each "
                            "flag once")
        seen[setting] = token
        if name in PATH_FLAGS:
            value = token.split("=", 1)[1] if "=" in token else (
                argv[index + 1] if index + 1 < len(argv) else None)
            if value is not None and not value.strip():
                raise ArgvError(f"{name} is empty; give a path (\".\" for the current "
                                "directory)")


def _condense(captured: str) -> str:
    """The message of tyro's box (title, rule, message, rule, help...) as one line."""
    segments: list[list[str]] = []
    current: list[str] = []
    for raw in captured.splitlines():
        line = raw.strip().strip("│┃").strip()
        if line.startswith(("╭", "┏")):  # a rich box's top border holds the title
            segments.append([line.strip("╭╮┏┓─━ ")])
        elif line and set(line) <= set("-─━╰╯┗┛"):
            if current:
                segments.append(current)
            current = []
        elif line:
            current.append(line)
    if current:
        segments.append(current)
    message = segments[1] if len(segments) > 1 else segments[0] if segments else []
    return " ".join(message).rstrip(".") or "the command line could not be parsed"


def parse_one_line(parse: Callable[[list[str]], T], argv: Sequence[str], prog: str,
                   aliases: Mapping[str, str] | None = None,
                   repeatable: Sequence[str] = (), quiet: bool = False) -> T:
    """`parse(argv)`, with every refusal as one line `error: ...` and exit status 2. Help
    (-h/--help) is printed as the parser prints it. `quiet`: refuse without a word (under
    torchrun every rank but 0, so that the error shows once)."""
    argv = list(argv)
    try:
        check_argv(argv, aliases, repeatable)
    except ArgvError as err:
        if not quiet:
            print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if "--help" in argv or "-h" in argv:
        try:
            return parse(argv)
        except BrokenPipeError:
            # `--help | head`: the reader has what it wanted; the flush at exit must not fail.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0) from None
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return parse(argv)
    except SystemExit as exit_:
        if not exit_.code:
            sys.stdout.write(captured.getvalue())
            raise
        if not quiet:
            print(f"error: {_condense(captured.getvalue())}; see `{prog} --help`",
                  file=sys.stderr)
        raise SystemExit(2) from None


def path_error_line(err: Exception) -> str:
    """One line for bad input found while planning; an OSError names the path."""
    if isinstance(err, OSError) and err.filename is not None:
        # Planning only looks at the paths given: one the system cannot look at is bad input
        # (a name too long, a loop of links, no permission).
        name = str(err.filename)
        shown = name if len(name) <= 80 else f"{name[:60]}...{name[-16:]}"
        return f"{shown}: {err.strerror}; check the paths given on the command line"
    return str(err)
