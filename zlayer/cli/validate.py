"""``zlayer validate [SPEC]``: parse a deployment spec locally and report every problem, or print the plan.

The spec is auto-discovered in the current directory when no path is given (:mod:`zlayer.cli.discovery`). On success
it prints ``Spec validation: PASSED`` and the deployment plan as ZLayer does; on failure ``Spec validation: FAILED``
and one ``FILE:LINE:COL: field.path: problem`` line per problem, and exits non-zero. ``--output json`` prints one
JSON object instead (``{"valid": ..., ...}``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from zlayer.errors import SpecError


def _problem_line(p: Any) -> str:
    return str(p)


def _problem_json(p: Any) -> Any:
    return p.to_json() if hasattr(p, "to_json") else {"message": str(p)}


def _cap(word: str) -> str:
    """Rust's Debug spelling of a unit enum variant (``if_not_present`` → ``IfNotPresent``)."""
    return "".join(part[:1].upper() + part[1:] for part in str(word).split("_"))


def _scale_text(scale: Any) -> str:
    mode = getattr(scale, "mode", "adaptive")
    if mode == "fixed":
        return f"fixed ({scale.replicas} replicas)"
    if mode == "adaptive":
        return f"adaptive ({scale.min}-{scale.max} replicas)"
    return "manual"


def _fmt_cpu(cpu: float) -> str:
    return str(int(cpu)) if float(cpu).is_integer() else repr(cpu)


def plan_lines(spec: Any) -> list[str]:
    """The deployment plan ZLayer prints after a successful validation."""
    lines = [
        "",
        "=== Deployment Plan ===",
        f"Deployment: {spec.deployment}",
        f"Version: {spec.version}",
        f"Services: {len(spec.services)}",
        "",
    ]
    for name, svc in spec.services.items():
        lines += [f"  Service: {name}", f"    Image: {svc.image.name}", f"    Type: {_cap(svc.rtype)}"]
        if svc.rtype == "cron" and svc.schedule:
            lines.append(f"    Schedule: {svc.schedule}")
        lines.append(f"    Scale: {_scale_text(svc.scale)}")
        res = svc.resources
        if res.cpu is not None or res.memory is not None:
            parts = ([f"cpu={_fmt_cpu(res.cpu)}"] if res.cpu is not None else []) + (
                [f"memory={res.memory}"] if res.memory is not None else []
            )
            lines.append("    Resources: " + " ".join(parts))
        if svc.endpoints:
            lines.append("    Endpoints:")
            lines += [f"      - {e.name} ({_cap(e.protocol)}:{e.port}, {_cap(e.expose)})" for e in svc.endpoints]
        if svc.depends:
            lines.append("    Dependencies:")
            lines += [f"      - {d.service} ({_cap(d.condition)})" for d in svc.depends]
        lines.append("")
    return lines


def summary_json(spec: Any, path: str) -> dict[str, Any]:
    services = []
    for name, svc in spec.services.items():
        services.append(
            {
                "name": name,
                "image": svc.image.name,
                "rtype": svc.rtype,
                "schedule": svc.schedule,
                "scale": _scale_text(svc.scale),
                "endpoints": [
                    {"name": e.name, "protocol": e.protocol, "port": e.port, "expose": e.expose} for e in svc.endpoints
                ],
                "depends": [{"service": d.service, "condition": d.condition} for d in svc.depends],
            }
        )
    return {
        "valid": True,
        "file": path,
        "deployment": spec.deployment,
        "version": spec.version,
        "services": services,
        "externals": sorted(getattr(spec, "externals", {}) or {}),
        "tunnels": sorted(getattr(spec, "tunnels", {}) or {}),
    }


@click.command("validate")
@click.argument("spec", required=False, type=click.Path(dir_okay=True))
@click.option(
    "--output",
    "-o",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
def validate(spec: str | None, output: str) -> None:
    """Validate SPEC (default: the *.zlayer.yml of the current directory) without deploying it."""
    from zlayer.cli.discovery import discover_spec_path
    from zlayer.spec import load_spec

    path = discover_spec_path(spec)
    try:
        parsed = load_spec(path)
    except SpecError as err:
        problems = list(err.problems)
        if output == "json":
            body = {"valid": False, "file": str(path), "error": err.message, "problems": []}
            body["problems"] = [_problem_json(p) for p in problems]
            click.echo(json.dumps(body, indent=2))
        else:
            click.echo("Spec validation: FAILED")
            if problems:
                click.echo(f"Error: {err.message.splitlines()[0]}", err=True)
                for p in problems:
                    click.secho(_problem_line(p), fg="red", err=True)
            else:
                click.secho(f"Error: {err}", fg="red", err=True)
                if err.hint:
                    click.echo(f"  hint: {err.hint}", err=True)
        sys.exit(err.exit_code)
    if output == "json":
        click.echo(json.dumps(summary_json(parsed, str(path)), indent=2))
        return
    click.echo("Spec validation: PASSED")
    click.echo("\n".join(plan_lines(parsed)))
