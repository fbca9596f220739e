"""``zlayer validate [SPEC]``: parse and check a deployment spec locally, reporting every problem at once."""

from __future__ import annotations

import json
from typing import Any

import click

from zlayer.errors import ZLayerError


def _txt(v: Any, default: str = "") -> str:
    return default if v is None or (isinstance(v, str) and type(v).__name__ == "Null") else str(v)


def _n(v: Any) -> int:
    from zlayer.spec.coerce import _int_of

    return _int_of(v, "integer")


def _services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per service the facts the summary shows, from the checked raw document with ZLayer's defaults."""
    out: dict[str, dict[str, Any]] = {}
    for name, body in (data.get("services") or {}).items():
        body = body if isinstance(body, dict) else {}
        scale = body.get("scale") if isinstance(body.get("scale"), dict) else None
        if scale is None:
            sc: dict[str, Any] = {"mode": "adaptive", "min": 1, "max": 10}
        elif str(scale.get("mode")) == "fixed":
            sc = {"mode": "fixed", "replicas": _n(scale["replicas"])}
        elif str(scale.get("mode")) == "adaptive":
            sc = {"mode": "adaptive", "min": _n(scale["min"]), "max": _n(scale["max"])}
        else:
            sc = {"mode": "manual"}
        res: dict[str, Any] = body["resources"] if isinstance(body.get("resources"), dict) else {}
        out[str(name)] = {
            "image": _txt((body.get("image") or {}).get("name")),
            "rtype": _txt(body.get("rtype"), "service"),
            "schedule": _txt(body.get("schedule")) or None,
            "scale": sc,
            "cpu": _txt(res.get("cpu")) or None,
            "memory": _txt(res.get("memory")) or None,
            "endpoints": [
                {
                    "name": _txt(e.get("name")),
                    "protocol": _txt(e.get("protocol")),
                    "port": _n(e.get("port")),
                    "expose": _txt(e.get("expose"), "internal"),
                }
                for e in (body.get("endpoints") or [])
            ],
            "depends": [
                {"service": _txt(d.get("service")), "condition": _txt(d.get("condition"), "healthy")}
                for d in (body.get("depends") or [])
            ],
        }
    return out


def _summary(data: dict[str, Any]) -> list[str]:
    services = _services(data)
    lines = [
        f"Deployment: {_txt(data.get('deployment'))}",
        f"Version:    {_txt(data.get('version'))}",
        f"Services:   {len(services)}",
    ]
    for name, svc in services.items():
        lines.append(f"  {name}")
        lines.append(f"    Image:     {svc['image']}")
        lines.append(f"    Type:      {svc['rtype']}" + (f" ({svc['schedule']})" if svc["schedule"] else ""))
        sc = svc["scale"]
        if sc["mode"] == "fixed":
            scale = f"fixed ({sc['replicas']} replicas)"
        elif sc["mode"] == "adaptive":
            scale = f"adaptive ({sc['min']}-{sc['max']} replicas)"
        else:
            scale = "manual"
        lines.append(f"    Scale:     {scale}")
        if svc["cpu"] or svc["memory"]:
            parts = [f"cpu={svc['cpu']}" if svc["cpu"] else "", f"memory={svc['memory']}" if svc["memory"] else ""]
            lines.append("    Resources: " + " ".join(p for p in parts if p))
        if svc["endpoints"]:
            lines.append("    Endpoints:")
            for ep in svc["endpoints"]:
                lines.append(f"      - {ep['name']} ({ep['protocol'].upper()}:{ep['port']}, {ep['expose']})")
        if svc["depends"]:
            deps = ", ".join(f"{d['service']} ({d['condition']})" for d in svc["depends"])
            lines.append(f"    Dependencies: {deps}")
    for key, label in (("externals", "Externals: "), ("tunnels", "Tunnels:   ")):
        if isinstance(data.get(key), dict) and data[key]:
            lines.append(f"{label} {', '.join(map(str, data[key]))}")
    return lines


def _as_json(data: dict[str, Any], path: str) -> dict[str, Any]:
    return {
        "valid": True,
        "file": path,
        "deployment": _txt(data.get("deployment")),
        "version": _txt(data.get("version")),
        "services": _services(data),
    }


@click.command("validate")
@click.argument("spec_path", metavar="[SPEC]", required=False, type=click.Path(dir_okay=True))
@click.option(
    "--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Output format."
)
def validate(spec_path: str | None, output: str) -> None:
    """Validate a deployment spec (auto-discovers a *.zlayer.yml in the current directory)."""
    from zlayer.cli.discovery import discover_spec_path
    from zlayer.spec.loader import check_spec

    try:
        path = discover_spec_path(spec_path)
        _, data = check_spec(path)
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
        click.echo(json.dumps(_as_json(data, str(path)), indent=2))
        return
    click.secho("Spec validation: PASSED", fg="green", bold=True)
    click.echo(f"File:       {path}")
    for line in _summary(data):
        click.echo(line)
