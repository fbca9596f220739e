"""``python -m zlayer.overlay IFNAME``: one userspace WireGuard interface in the foreground, driven through its UAPI
socket (``wg set`` / ``wg show``) as ``wireguard-go -f IFNAME`` is. Stops on SIGTERM or SIGINT and removes the
interface and its socket."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from zlayer.errors import ZLayerError
from zlayer.overlay.interface import Interface, Timers
from zlayer.overlay.uapi import DEFAULT_DIR, UapiServer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zlayer.overlay", description=__doc__)
    ap.add_argument("ifname")
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--mtu", type=int, default=1420)
    ap.add_argument("--uapi-dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--no-offload", action="store_true", help="no TUN/UDP segmentation offloads")
    ap.add_argument("--rekey-after-time", type=float, default=Timers.rekey_after_time, help=argparse.SUPPRESS)
    ap.add_argument("--reject-after-time", type=float, default=Timers.reject_after_time, help=argparse.SUPPRESS)
    ap.add_argument("--keepalive-timeout", type=float, default=Timers.keepalive_timeout, help=argparse.SUPPRESS)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s")
    timers = Timers(
        rekey_after_time=args.rekey_after_time,
        reject_after_time=args.reject_after_time,
        keepalive_timeout=args.keepalive_timeout,
    )
    try:
        iface = Interface(
            args.ifname, listen_port=args.listen_port, mtu=args.mtu, offload=not args.no_offload, timers=timers
        )
        server = UapiServer(iface, args.uapi_dir)
    except ZLayerError as e:
        print(f"zlayer.overlay: {e}", file=sys.stderr)
        return 1
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    iface.start()
    print(f"{args.ifname}: up, UDP port {iface.listen_port}, UAPI {server.path}", flush=True)
    done.wait()
    server.close()
    iface.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
