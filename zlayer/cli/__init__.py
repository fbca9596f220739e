"""The ``zlayer`` command line (:mod:`zlayer.cli.main`). Each command group lives in its own module and is imported
only when used.

:func:`main` is the console script's entry point. The two commands that scripts, hooks and editors run most often in
a loop, ``zlayer --version`` and ``zlayer validate [FILE]`` in their plain forms, run from here without loading the
command-line parser (click, a third of a validate's start-up); every other form goes to the parser, which accepts
these too.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args in (["--version"], ["-V"]):
        from zlayer._version import __version__

        sys.stdout.write(f"zlayer {__version__}\n")
        return
    if args[:1] == ["validate"] and len(args) <= 2 and not any(a.startswith("-") for a in args[1:]):
        sys.exit(_validate(args[1] if len(args) == 2 else None, args))
    from zlayer.cli.main import main as run

    run(args)


def _validate(spec_path: str | None, args: list[str]) -> int:
    try:
        from zlayer.cli.plan import run

        return run(spec_path)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # as the parser's path reports it: a message, never a traceback
        from zlayer.cli.main import _report

        return _report(e, False)


__all__ = ["main"]
