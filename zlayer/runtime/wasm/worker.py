"""One WASM replica's process: ``python -m zlayer.runtime.wasm.worker DIR`` runs the program (a WASIp1 command module
or a ``wasi:cli/run`` component) ``DIR/config.json`` describes and writes how it ended to ``DIR/result.json``; a
``wasi:http/incoming-handler`` component is served over HTTP/1.1 on ``listen`` (the replica's own loopback address
and the service's port) until the worker is stopped, ``DIR/ready`` written once it listens with its first instance
made, and ``DIR/stats.json`` rewritten (at most every 0.5 s) with its call counts.

Why a process per replica and not a thread of the daemon with epoch interruption: a guest can block inside a host
call (``poll_oneoff`` sleeping, a read that never returns) where no epoch check runs, and wasmtime aborts the whole
process on some internal errors; in its own process neither stalls nor ends the daemon, ``stop``/``kill`` are
signals that end it wherever it is, the kernel accounts its memory and CPU, and it outlives a daemon restart like a
container does. The price is the process start (~the Python import, tens of ms), paid once per replica, not per run:
the module comes precompiled from the digest-keyed cache and is linked against WASI once.

``config.json``: ``artifact`` (path), ``digest``, ``cache`` (dir), ``argv``, ``env`` ([[k, v]...]), ``preopens``
([[host, guest, readonly]...]), ``limits`` ({memory_bytes, fuel, deadline_s}), ``log_path``; for HTTP components
``listen`` ([ip, port]), ``min_instances``, ``max_instances``, ``idle_timeout`` (seconds; null: instances stay).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from zlayer.errors import ZLayerError
    from zlayer.runtime.logfile import CriWriter, rfc3339_now
    from zlayer.runtime.wasm.engine import EXIT_TRAP, EpochTicker, Limits, P2Http, load_program
    from zlayer.runtime.wasm.wasihttp import Guest

    root = Path(argv[1])
    cfg = json.loads((root / "config.json").read_text())
    log = CriWriter(Path(cfg["log_path"]))
    limits = Limits(**cfg["limits"])
    code, reason = EXIT_TRAP, "runtime_error"
    try:
        from zlayer.runtime.wasm.plugin import context_from

        program = load_program(
            Path(cfg["artifact"]),
            cfg["digest"],
            Path(cfg["cache"]),
            fuel=bool(limits.fuel),
            where=cfg["artifact"],
            plugin=context_from(cfg["plugin"], log.write) if cfg.get("plugin") else None,  # type: ignore[arg-type]
            guest=Guest(
                cfg["argv"],
                [tuple(x) for x in cfg["env"]],
                log.write,  # type: ignore[arg-type]
                outgoing=bool(cfg.get("http_outgoing")),
                allowed_hosts=cfg.get("allowed_hosts", []),
                preopens=[(h, g, bool(ro)) for h, g, ro in cfg["preopens"]],
            ),
        )
        if isinstance(program, P2Http):
            from zlayer.runtime.wasm.serve import serve

            program.configure(
                limits=limits,
                max_instances=int(cfg.get("max_instances", 10)),
                min_instances=int(cfg.get("min_instances", 0)),
                idle_timeout=cfg.get("idle_timeout"),
            )
            serve(program, root, tuple(cfg["listen"]), int(cfg.get("min_instances", 0)), log.write)  # type: ignore[arg-type]
            return 0  # serve returns only when SIGTERM ended it
        ticker = EpochTicker(program.engine) if limits.deadline_s is not None else None
        result = program.run(
            argv=cfg["argv"],
            env=[tuple(x) for x in cfg["env"]],
            preopens=[(h, g, bool(ro)) for h, g, ro in cfg["preopens"]],
            output=log.write,  # type: ignore[arg-type]
            limits=limits,
            ticking=ticker is not None,
        )
        if ticker is not None:
            ticker.close()
        code, reason = result.exit_code, result.reason
    except ZLayerError as e:
        log.write("stderr", f"zlayer: {e}\n".encode())
        reason = f"runtime_error: {e.message}"
    except Exception as e:  # anything wasmtime raised that we did not foresee: said, not a traceback in a file
        log.write("stderr", f"zlayer: {type(e).__name__}: {e}\n".encode())
        reason = f"runtime_error: {type(e).__name__}: {e}"
    if reason not in ("exited", "runtime_error") and not reason.startswith("runtime_error"):
        log.write("stderr", f"zlayer: {reason}\n".encode())
    log.close()
    tmp = root / "result.json.tmp"
    tmp.write_text(json.dumps({"exit_code": code, "reason": reason, "finished_at": rfc3339_now()}))
    os.replace(tmp, root / "result.json")
    return code


if __name__ == "__main__":
    sys.stdout.flush()
    # os._exit: wasmtime's runtime threads must not run their destructors at interpreter exit (they can abort)
    os._exit(main(sys.argv) & 0xFF)
