"""``zlayer completions bash|zsh|fish``: print the shell completion script (click's completion machinery)."""

from __future__ import annotations

import click


@click.command("completions")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completions(shell: str) -> None:
    """Print the completion script for SHELL, e.g. `zlayer completions bash > /etc/bash_completion.d/zlayer`."""
    from click.shell_completion import get_completion_class

    from zlayer.cli.main import cli

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        raise click.UsageError(f"unsupported shell {shell}")
    click.echo(cls(cli, {}, "zlayer", "_ZLAYER_COMPLETE").source())
