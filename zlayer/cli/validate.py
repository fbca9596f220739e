"""``zlayer validate [SPEC]``: the command-line face of :mod:`zlayer.cli.plan`."""

from __future__ import annotations

import click


@click.command("validate")
@click.argument("spec_path", metavar="[SPEC]", required=False, type=click.Path(dir_okay=True))
@click.option(
    "--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Output format."
)
def validate(spec_path: str | None, output: str) -> None:
    """Validate a deployment spec (auto-discovers a *.zlayer.yml in the current directory)."""
    from zlayer.cli.plan import run

    code = run(spec_path, output)
    if code:
        raise SystemExit(code)
