"""``zlayer serve``: run the node daemon (API on the unix socket and TCP, agent, proxy)."""

from __future__ import annotations

import os
import sys

import click

from zlayer.paths import API_PORT


@click.command("serve")
@click.option("--bind", envvar="ZLAYER_API_BIND", default=f"0.0.0.0:{API_PORT}", show_default=True,
              help="TCP address of the API (token-authenticated); 'none' disables TCP.")  # fmt: skip
@click.option("--socket", "socket_path", help="Unix socket of the API [default: from the data dir].")
@click.option("--daemon", "background", is_flag=True, help="Detach: run in the background, log to daemon.log.")
@click.option("--jwt-secret", envvar="ZLAYER_JWT_SECRET", help="Secret signing the TCP clients' bearer tokens "
              "[default: generated once, kept in DATA/jwt_secret]; a 24 h admin token is kept in "
              "DATA/admin_bearer.token.")  # fmt: skip
@click.option("--no-swagger", is_flag=True, help="Do not serve the Swagger UI.")
@click.option("--metrics-bind", envvar="ZLAYER_METRICS_BIND", help="Serve Prometheus metrics on HOST:PORT.")
@click.option("--deployment-name", envvar="ZLAYER_DEPLOYMENT_NAME", default="zlayer", show_default=True)
@click.option("--dns-port", envvar="ZLAYER_DNS_PORT", type=int, default=15353, show_default=True,
              help="Port of the service-name DNS server.")  # fmt: skip
@click.option("--acme-email", envvar="ZLAYER_ACME_EMAIL", help="ACME account e-mail: https hosts (and TLS streams) get "
              "certificates by ACME HTTP-01 (renewed 30 days before expiry) instead of self-signed ones.")  # fmt: skip
@click.option("--acme-directory", envvar="ZLAYER_ACME_DIRECTORY", help="ACME directory URL (enables ACME) "
              "[default with --acme-email: Let's Encrypt].")  # fmt: skip
@click.option("--max-layer-size", envvar="ZLAYER_MAX_LAYER_SIZE", metavar="SIZE",
              help="Most an image layer may unpack to, e.g. 64Gi (Ki, Mi, Gi, Ti) [default: 64Gi].")  # fmt: skip
@click.option("--max-image-size", envvar="ZLAYER_MAX_IMAGE_SIZE", metavar="SIZE",
              help="Most all layers of an image may unpack to [default: 256Gi].")  # fmt: skip
@click.option("--docker-socket", is_flag=True, help="Also serve the Docker Engine API (the `docker` CLI, Compose, "
              "docker-py) on a root-only unix socket; its containers run on this node.")  # fmt: skip
@click.option(
    "--docker-socket-path",
    envvar="ZLAYER_DOCKER_SOCKET",
    metavar="PATH",
    help="Socket of the Docker Engine API (implies --docker-socket) [default: /var/run/docker.sock].",
)
@click.option("--heartbeat-interval", envvar="ZLAYER_HEARTBEAT_INTERVAL", type=float, default=5.0, show_default=True,
              help="In a cluster: seconds between renewals of this node's liveness lease.")  # fmt: skip
@click.option("--dead-after", envvar="ZLAYER_DEAD_AFTER", type=float, default=30.0, show_default=True,
              help="In a cluster: seconds without a renewal before a node is dead (what `node init` makes the "
              "cluster's, unless it is given its own).")  # fmt: skip
@click.option("--wg-port", envvar="ZLAYER_WG_PORT", type=click.IntRange(1, 65535), default=51420, show_default=True,
              help="In a cluster: the UDP port of this node's WireGuard overlay (the one port other machines need "
              "open to reach its replicas).")  # fmt: skip
@click.option("--overlay-peer-timeout", envvar="ZLAYER_OVERLAY_PEER_TIMEOUT", type=click.FloatRange(min=1),
              default=180.0, show_default=True, metavar="SECONDS",
              help="In a cluster: seconds without a WireGuard handshake before an overlay peer is unhealthy (its "
              "replicas leave this node's proxy and DNS until it answers again).")  # fmt: skip
@click.option("--autoscale-interval", envvar="ZLAYER_AUTOSCALE_INTERVAL", type=click.FloatRange(min=0), default=10.0,
              show_default=True, metavar="SECONDS",
              help="How often the autoscaler evaluates adaptive services (0: never).")  # fmt: skip
@click.option("--api-tls-cert", envvar="ZLAYER_API_TLS_CERT", metavar="PEM",
              help="Serve the TCP API over TLS with this certificate chain (with --api-tls-key).")  # fmt: skip
@click.option("--api-tls-key", envvar="ZLAYER_API_TLS_KEY", metavar="PEM", help="The certificate's private key.")
@click.option("--api-tls-acme", envvar="ZLAYER_API_TLS_ACME", metavar="DOMAIN",
              help="Serve the TCP API over TLS with a certificate for DOMAIN by ACME HTTP-01 (answered on "
              "port 80; --acme-directory, --acme-email), renewed 30 days before expiry; never in plain.")  # fmt: skip
@click.pass_context
def serve(
    ctx: click.Context,
    bind: str,
    socket_path: str | None,
    background: bool,
    jwt_secret: str | None,
    no_swagger: bool,
    metrics_bind: str | None,
    deployment_name: str,
    dns_port: int,
    acme_email: str | None,
    acme_directory: str | None,
    max_layer_size: str | None,
    max_image_size: str | None,
    docker_socket: bool,
    docker_socket_path: str | None,
    heartbeat_interval: float,
    dead_after: float,
    wg_port: int,
    overlay_peer_timeout: float,
    autoscale_interval: float,
    api_tls_cert: str | None,
    api_tls_key: str | None,
    api_tls_acme: str | None,
) -> None:
    """Run the zlayer daemon on this node (foreground unless --daemon)."""
    from dataclasses import replace

    from zlayer.cli.common import warn_if_secret_in_argv
    from zlayer.config import DaemonConfig, check_acme_domain, check_tls_pair, split_bind

    if jwt_secret:
        warn_if_secret_in_argv("jwt_secret", "ZLAYER_JWT_SECRET")
    root = ctx.find_root().obj
    paths = replace(root.paths, socket=__import__("pathlib").Path(socket_path)) if socket_path else root.paths
    tcp = None if bind.lower() in ("", "none", "off") else bind
    if tcp:
        split_bind(tcp)
    if metrics_bind:
        split_bind(metrics_bind, "--metrics-bind")
    check_tls_pair(api_tls_cert, api_tls_key)
    if api_tls_cert and api_tls_key:
        api_tls_cert, api_tls_key = os.path.abspath(api_tls_cert), os.path.abspath(api_tls_key)
    if api_tls_acme is not None:
        from zlayer.errors import UsageError

        if api_tls_cert:
            raise UsageError("--api-tls-acme or --api-tls-cert/--api-tls-key: one or the other",
                             where="--api-tls-acme")  # fmt: skip
        if not tcp:
            raise UsageError("--api-tls-acme serves the TCP API: it needs --bind HOST:PORT", where="--api-tls-acme")
        api_tls_acme = check_acme_domain(api_tls_acme)
    from zlayer.images.unpack import UnpackLimits

    UnpackLimits.from_env(max_layer_size, max_image_size)  # a bad size is refused here, not at the first pull
    if heartbeat_interval <= 0 or dead_after < 2 * heartbeat_interval:
        from zlayer.errors import UsageError

        raise UsageError(f"--dead-after {dead_after:g} must be at least two heartbeats ({heartbeat_interval:g}s each)",
                         where="--dead-after")  # fmt: skip
    cfg = DaemonConfig(
        paths=paths,
        bind=tcp,
        metrics_bind=metrics_bind,
        token=jwt_secret,
        swagger=not no_swagger,
        runtime=root.runtime,
        deployment_name=deployment_name,
        host_network=root.host_network,
        dns_port=dns_port,
        acme_email=acme_email,
        acme_directory=acme_directory,
        max_layer_size=max_layer_size,
        max_image_size=max_image_size,
        docker_socket=(docker_socket_path or "/var/run/docker.sock") if docker_socket or docker_socket_path else None,
        heartbeat_interval=heartbeat_interval,
        dead_after=dead_after,
        wg_port=wg_port,
        overlay_peer_timeout=overlay_peer_timeout,
        autoscale_interval=autoscale_interval,
        api_tls_cert=api_tls_cert,
        api_tls_key=api_tls_key,
        api_tls_acme=api_tls_acme,
        chosen=not os.environ.get("ZLAYER_SPAWNER_PID"),  # ZLayer's mark of a daemon a client started
    )
    if background:
        from zlayer.daemon import serve_background

        # the secret goes to the child through its environment, not its argv (ps would show it), as ZLayer does
        pid = serve_background(cfg.serve_argv(), cfg, env={"ZLAYER_JWT_SECRET": jwt_secret} if jwt_secret else None)
        click.echo(f"zlayer daemon started (pid {pid}), socket {paths.socket}")
        return
    from zlayer.daemon import serve_foreground

    serve_foreground(cfg)
    sys.exit(0)
