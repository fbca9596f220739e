"""``zlayer validate [SPEC]``: parse and check a deployment spec locally, reporting every problem at once."""

from __future__ import annotations

import json
from typing import Any

import click

from zlayer.errors import ZLayerError


def _summary(spec: Any) -> list[str]:
    from zlayer.spec.models import AdaptiveScale, FixedScale

    lines = [
        f"Deployment: {spec.deployment}",
        f"Version:    {spec.version}",
        f"Services:   {len(spec.services)}",
    ]
    for name, svc in spec.services.items():
        lines.append(f"  {name}")
        lines.append(f"    Image:     {svc.image.name}")
        lines.append(f"    Type:      {svc.rtype}" + (f" ({svc.schedule})" if svc.schedule else ""))
        s = svc.scale
        if isinstance(s, FixedScale):
            scale = f"fixed ({s.replicas} replicas)"
        elif isinstance(s, AdaptiveScale):
            scale = f"adaptive ({s.min}-{s.max} replicas)"
        else:
            scale = "manual"
        lines.append(f"    Scale:     {scale}")
        r = svc.resources
        if r.cpu is not None or r.memory is not None:
            parts = [f"cpu={r.cpu:g}" if r.cpu is not None else "", f"memory={r.memory}" if r.memory else ""]
            lines.append("    Resources: " + " ".join(p for p in parts if p))
        if svc.endpoints:
            lines.append("    Endpoints:")
            for ep in svc.endpoints:
                lines.append(f"      - {ep.name} ({ep.protocol.upper()}:{ep.port}, {ep.expose})")
        if svc.depends:
            lines.append("    Dependencies: " + ", ".join(f"{d.service} ({d.condition})" for d in svc.depends))
    if spec.externals:
        lines.append(f"Externals:  {', '.join(spec.externals)}")
    if spec.tunnels:
        lines.append(f"Tunnels:    {', '.join(spec.tunnels)}")
    return lines


def _as_json(spec: Any, path: str) -> dict[str, Any]:
    return {
        "valid": True,
        "file": path,
        "deployment": spec.deployment,
        "version": spec.version,
        "services": {
            name: {
                "image": svc.image.name,
                "rtype": svc.rtype,
                "scale": svc.scale.model_dump(mode="json", exclude_none=True),
                "endpoints": [
                    {"name": e.name, "protocol": e.protocol, "port": e.port, "expose": e.expose} for e in svc.endpoints
                ],
                "depends": [d.service for d in svc.depends],
            }
            for name, svc in spec.services.items()
        },
    }


@click.command("validate")
@click.argument("spec_path", metavar="[SPEC]", required=False, type=click.Path(dir_okay=True))
@click.option(
    "--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Output format."
)
def validate(spec_path: str | None, output: str) -> None:
    """Validate a deployment spec (auto-discovers a *.zlayer.yml in the current directory)."""
    from zlayer.cli.discovery import discover_spec_path
    from zlayer.spec.loader import load_spec

    try:
        path = discover_spec_path(spec_path)
        spec = load_spec(path)
    except ZLayerError as err:
        problems = list(getattr(err, "problems", []) or [])
        if output == "json":
            body = {"valid": False, **err.to_json()}
            if not problems:
                body["problems"] = []
            click.echo(json.dumps(body, indent=2))
        else:
            click.secho("Spec validation: FAILED", fg="red", bold=True, err=True)
            if problems:
                for p in problems:
                    click.echo(str(p), err=True)
            else:
                click.echo(f"Error: {err}", err=True)
                if err.hint:
                    click.echo(f"  hint: {err.hint}", err=True)
        raise SystemExit(err.exit_code) from None
    if output == "json":
        click.echo(json.dumps(_as_json(spec, str(path)), indent=2))
        return
    click.secho("Spec validation: PASSED", fg="green", bold=True)
    click.echo(f"File:       {path}")
    for line in _summary(spec):
        click.echo(line)
