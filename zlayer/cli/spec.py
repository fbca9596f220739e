"""``zlayer spec dump SPEC [-f yaml|json]`` and ``zlayer spec schema``."""

from __future__ import annotations

import json

import click


@click.group("spec")
def spec() -> None:
    """Inspect deployment specs: the normalised form (dump) and the JSON Schema (schema)."""


@spec.command("dump")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=True))
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Output format.",
)
def dump(spec_path: str, fmt: str) -> None:
    """Parse SPEC and print it normalised, with every default filled in."""
    from zlayer.spec.api import dump_spec
    from zlayer.spec.loader import load_spec

    click.echo(dump_spec(load_spec(spec_path), fmt), nl=False)


@spec.command("schema")
@click.option("-o", "--out", type=click.Path(dir_okay=False, writable=True), help="Write to a file instead of stdout.")
def schema(out: str | None) -> None:
    """Print the JSON Schema of *.zlayer.yml (for editors' YAML language servers)."""
    from zlayer.spec.api import spec_json_schema

    text = json.dumps(spec_json_schema(), indent=2) + "\n"
    if out:
        from pathlib import Path

        tmp = Path(out + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    else:
        click.echo(text, nl=False)
