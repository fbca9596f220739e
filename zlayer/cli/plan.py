"""What ``zlayer validate [SPEC]`` does and prints: parse and check a deployment spec locally, report every problem
at once, or print ZLayer's deployment plan.

No click here: ``zlayer validate FILE`` runs this straight from the entry point (:func:`zlayer.cli.main`), so the
check a pre-commit hook or an editor runs on every save costs little more than starting Python and reading YAML.
"""

from __future__ import annotations

import sys

from zlayer.errors import ZLayerError

TYPE_CHECKING = False  # (typing is imported for the type checker only: `zlayer validate` never loads it)
if TYPE_CHECKING:
    from typing import Any


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


def _debug(word: str) -> str:
    """Rust's Debug spelling of a unit enum variant (``if_not_present`` → ``IfNotPresent``)."""
    return "".join(part[:1].upper() + part[1:] for part in word.split("_"))


def _rust_f64(text: str) -> str:
    try:
        v = float(text)
    except ValueError:
        return text
    return str(int(v)) if v.is_integer() else repr(v)


def _summary(data: dict[str, Any]) -> list[str]:
    """ZLayer's deployment plan (``print_deployment_plan``), line for line."""
    services = _services(data)
    lines = [
        "",
        "=== Deployment Plan ===",
        f"Deployment: {_txt(data.get('deployment'))}",
        f"Version: {_txt(data.get('version'))}",
        f"Services: {len(services)}",
        "",
    ]
    for name, svc in services.items():
        lines.append(f"  Service: {name}")
        lines.append(f"    Image: {svc['image']}")
        lines.append(f"    Type: {_debug(svc['rtype'])}")
        sc = svc["scale"]
        if sc["mode"] == "fixed":
            scale = f"fixed ({sc['replicas']} replicas)"
        elif sc["mode"] == "adaptive":
            scale = f"adaptive ({sc['min']}-{sc['max']} replicas)"
        else:
            scale = "manual"
        lines.append(f"    Scale: {scale}")
        if svc["cpu"] is not None or svc["memory"] is not None:
            res = "    Resources:"
            if svc["cpu"] is not None:
                res += f" cpu={_rust_f64(svc['cpu'])}"
            if svc["memory"] is not None:
                res += f" memory={svc['memory']}"
            lines.append(res)
        if svc["endpoints"]:
            lines.append("    Endpoints:")
            for ep in svc["endpoints"]:
                lines.append(f"      - {ep['name']} ({_debug(ep['protocol'])}:{ep['port']}, {_debug(ep['expose'])})")
        if svc["depends"]:
            lines.append("    Dependencies:")
            for d in svc["depends"]:
                lines.append(f"      - {d['service']} ({_debug(d['condition'])})")
        lines.append("")
    return lines


def _as_json(data: dict[str, Any], path: str) -> dict[str, Any]:
    return {
        "valid": True,
        "file": path,
        "deployment": _txt(data.get("deployment")),
        "version": _txt(data.get("version")),
        "services": _services(data),
    }


def run(spec_path: str | None, output: str = "text") -> int:
    """Check the spec (auto-discovered when ``spec_path`` is None), print the verdict; returns the exit code."""
    import os

    from zlayer.spec.loader import check_spec

    try:
        if spec_path is not None and os.path.isfile(spec_path) and os.path.normpath(spec_path) == spec_path:
            path = spec_path  # a plain file name is used as given, as discovery would (which imports pathlib)
        else:
            from zlayer.spec.discovery import discover_spec_path

            path = str(discover_spec_path(spec_path))
        _, data = check_spec(path)
    except ZLayerError as err:
        problems = list(getattr(err, "problems", []) or [])
        if output == "json":
            body = {"valid": False, **err.to_json()}
            if not problems:
                body["problems"] = []
            _out(_json(body))
        else:
            _out("Spec validation: FAILED")
            if problems:
                for p in problems:
                    _out(str(p), sys.stderr)
            else:
                _out(f"Error: {err}", sys.stderr)
                if err.hint:
                    _out(f"  hint: {err.hint}", sys.stderr)
        return err.exit_code
    if output == "json":
        _out(_json(_as_json(data, str(path))))
        return 0
    _out("Spec validation: PASSED")
    _out("\n".join(_summary(data)))
    return 0


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2)


def _out(text: str, stream: Any = None) -> None:
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()
