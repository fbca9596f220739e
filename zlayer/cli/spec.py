"""``zlayer spec``: ``dump SPEC [-f yaml|json]`` (the normalised spec, defaults filled in) and ``schema`` (JSON Schema).

``zlayer spec schema > zlayer.schema.json`` gives editors' YAML language servers the spec's shape; for example with
the Red Hat YAML extension: ``# yaml-language-server: $schema=./zlayer.schema.json`` at the top of a spec.
"""

from __future__ import annotations

import json

import click


@click.group("spec")
def spec() -> None:
    """Inspect deployment specs (dump, schema)."""


@spec.command("dump")
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=True))
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"], case_sensitive=False),
    default="yaml",
    show_default=True,
    help="Output format.",
)
def dump(spec_file: str, fmt: str) -> None:
    """Parse SPEC and print it normalised, with every default filled in."""
    from zlayer.spec import dump_spec, load_spec

    click.echo(dump_spec(load_spec(spec_file), fmt.lower()).rstrip("\n"))


@spec.command("schema")
@click.option("--indent", type=int, default=2, show_default=True, help="JSON indentation.")
def schema(indent: int) -> None:
    """Print the JSON Schema of a deployment spec (for editors and validators)."""
    from zlayer.spec import spec_json_schema

    click.echo(json.dumps(spec_json_schema(), indent=indent))
