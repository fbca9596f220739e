"""Man pages made from the CLI itself: ``zlayer.1`` and one ``zlayer-COMMAND.1`` per top-level command, with every
subcommand and option as ``--help`` shows them, so the pages never disagree with the program.

Used by the Linux packages (``packaging/linux/build.py``); ``python -m zlayer.cli.manpages DIR`` writes them."""

from __future__ import annotations

import inspect
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from zlayer._version import __version__


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, and a line that starts with a dot or a quote; a blank line is a paragraph."""
    out = []
    for line in inspect.cleandoc(text).replace("\\", "\\e").splitlines():
        out.append(".PP" if not line.strip() else "\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _options(cmd: click.Command, ctx: click.Context) -> list[str]:
    lines = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        lines += [".TP", f"\\fB{_roff(names)}\\fR", _roff(help_text or "")]
    return lines


def _walk(cmd: click.Command, ctx: click.Context, path: list[str]) -> list[str]:
    """The SYNOPSIS-like block of ``cmd`` and, for a group, of each subcommand in turn."""
    usage = " ".join([*path, *cmd.collect_usage_pieces(ctx)])
    lines = [".SS " + _roff(" ".join(path)), ".nf", _roff(usage), ".fi", _roff(cmd.help or cmd.short_help or "")]
    lines += _options(cmd, ctx)
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            lines += _walk(sub, click.Context(sub, info_name=name, parent=ctx), [*path, name])
    return lines


def pages() -> dict[str, str]:
    """``{file name: roff text}`` for ``zlayer.1`` and every ``zlayer-COMMAND.1``."""
    from zlayer.cli.commands import COMMANDS
    from zlayer.cli.main import cli

    date = datetime.now(UTC).strftime("%Y-%m-%d")
    head = f'.TH {{name}} 1 "{date}" "zlayer {__version__}" "zlayer manual"'
    root = click.Context(cli, info_name="zlayer")
    out: dict[str, str] = {}
    summary = [".TP", "\\fBzlayer-{0}\\fR(1)", "{1}"]
    body = [head.format(name="ZLAYER"), ".SH NAME", "zlayer \\- container orchestration from one *.zlayer.yml",
            ".SH SYNOPSIS", "\\fBzlayer\\fR [\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
            ".SH DESCRIPTION", _roff(cli.help or ""), ".SH GLOBAL OPTIONS", *_options(cli, root),
            ".SH COMMANDS"]  # fmt: skip
    for name in sorted(COMMANDS):
        body += [s.format(name, _roff(COMMANDS[name][2])) for s in summary]
        cmd = cli.get_command(root, name)
        if cmd is None:
            continue
        ctx = click.Context(cmd, info_name=name, parent=root)
        page = [head.format(name=f"ZLAYER-{name.upper()}"), ".SH NAME",
                f"zlayer-{name} \\- {_roff(COMMANDS[name][2])}", ".SH COMMANDS", *_walk(cmd, ctx, ["zlayer", name]),
                ".SH SEE ALSO", "\\fBzlayer\\fR(1)"]  # fmt: skip
        out[f"zlayer-{name}.1"] = "\n".join(page) + "\n"
    out["zlayer.1"] = "\n".join(body) + "\n"
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m zlayer.cli.manpages DIR", file=sys.stderr)
        return 2
    where = Path(argv[0])
    where.mkdir(parents=True, exist_ok=True)
    for name, text in pages().items():
        (where / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
