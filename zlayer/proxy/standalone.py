"""Run the C L7 proxy alone from a static JSON route table (no daemon): ``python -m zlayer.proxy.standalone FILE``.

The file::

    {"workers": 1,
     "header_timeout": 30, "idle_timeout": 60, "connect_timeout": 5, "response_timeout": 60,
     "routes": [{"key": "web#http", "listen": "127.0.0.1:8080", "host": null, "path": "/", "strip_prefix": false,
                 "backends": ["127.0.0.1:9000", "127.0.0.1:9001"], "tls": false, "strategy": "round_robin"}],
     "certificates": [{"domain": "example.test", "cert": "cert.pem", "key": "key.pem"}]}

``tls: true`` terminates TLS on that listener with the certificates (chosen by SNI, else the first); ``strategy`` is
``round_robin`` (default) or ``least_connections``.

Serves until SIGTERM or SIGINT. Used by perf/proxy_http.py and perf/proxy_tls.py.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from zlayer.errors import SpecError, ZLayerError
from zlayer.limits import load_json
from zlayer.spec.container import STRATEGIES


def _addr(text: Any, where: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SpecError(f"expected HOST:PORT, got {text!r}", where=where)
    return host.strip("[]"), int(port)


def load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reads and checks the table; errors name the file and the field."""
    try:
        raw = load_json(path.read_bytes(), where=str(path), error=SpecError)
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", where=str(path)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("routes"), list):
        raise SpecError("expected an object with a routes list", where=str(path))
    opts: dict[str, Any] = {
        k: float(raw[k]) for k in ("header_timeout", "idle_timeout", "connect_timeout", "response_timeout") if k in raw
    }
    opts["workers"] = int(raw.get("workers", 1))
    routes = []
    for i, r in enumerate(raw["routes"]):
        where = f"{path}: routes[{i}]"
        if not isinstance(r, dict) or "key" not in r or "listen" not in r:
            raise SpecError("a route needs key and listen", where=where)
        strategy = str(r.get("strategy") or "round_robin")
        if strategy not in STRATEGIES:
            raise SpecError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}", where=f"{where}.strategy"
            )
        routes.append(
            {
                "key": str(r["key"]),
                "listen": _addr(r["listen"], f"{where}.listen"),
                "host": r.get("host"),
                "path": str(r.get("path") or "/"),
                "strip_prefix": bool(r.get("strip_prefix", False)),
                "backends": [_addr(b, f"{where}.backends[{j}]") for j, b in enumerate(r.get("backends") or [])],
                "tls": bool(r.get("tls", False)),
                "strategy": strategy,
            }
        )
    certs = []
    for i, c in enumerate(raw.get("certificates") or []):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in ("domain", "cert", "key")):
            raise SpecError("a certificate needs domain, cert and key strings", where=f"{path}: certificates[{i}]")
        base = path.parent
        certs.append((c["domain"], str(base / c["cert"]), str(base / c["key"])))
    if any(r["tls"] for r in routes) and not certs:
        raise SpecError("a tls route needs at least one entry in certificates", where=str(path))
    opts["certificates"] = certs
    return opts, routes


def serve(path: Path) -> None:
    from zlayer.proxy._l7 import Proxy

    opts, routes = load(path)
    workers = int(opts.pop("workers"))
    certs = opts.pop("certificates")
    proxy = Proxy(workers, **opts)
    if certs:
        proxy.set_certificates(certs)
    table = []
    groups = []
    for i, r in enumerate(routes):
        host, port = r["listen"]
        bound = proxy.listen(host, port, r["tls"])
        table.append((r["key"], bound, r["host"], r["path"], r["strip_prefix"], i, r["strategy"]))
        groups.append((r["key"], [(h, p, True) for h, p in r["backends"]]))
    proxy.apply(table, groups)
    proxy.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    proxy.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m zlayer.proxy.standalone ROUTES.json", file=sys.stderr)
        return 2
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        serve(Path(args[0]))
    except ZLayerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
