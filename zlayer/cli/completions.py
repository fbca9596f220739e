"""``zlayer completions SHELL``: print the shell completion script (bash, zsh or fish) on stdout.

Install, for example: ``zlayer completions bash > /etc/bash_completion.d/zlayer`` or
``zlayer completions fish > ~/.config/fish/completions/zlayer.fish``. The script calls back into ``zlayer`` with
``_ZLAYER_COMPLETE`` set, so completions always follow the installed version's commands and flags.
"""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_ZLAYER_COMPLETE"


def completion_script(shell: str) -> str:
    """The completion script of ``shell`` for the ``zlayer`` command."""
    from click.shell_completion import get_completion_class

    from zlayer.cli.main import cli

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click.Choice already restricts the shells
        raise click.BadParameter(f"unsupported shell {shell!r}; choose one of {', '.join(SHELLS)}")
    return str(cls(cli, {}, "zlayer", COMPLETE_VAR).source())


@click.command("completions")
@click.argument("shell", type=click.Choice(SHELLS, case_sensitive=False))
def completions(shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish)."""
    click.echo(completion_script(shell.lower()))
