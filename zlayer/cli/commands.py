"""Which module implements each top-level command.

One line per command: ``"name": ("module", "attribute", "one-line help")``. Modules are imported only when their
command runs (or when help lists them), so adding a command costs nothing at start-up.
"""

from __future__ import annotations

COMMANDS: dict[str, tuple[str, str, str]] = {
    "validate": ("zlayer.cli.validate", "validate", "Check a deployment spec and report every problem"),
    "spec": ("zlayer.cli.spec", "spec", "Inspect deployment specs (dump, schema)"),
    "runtime": ("zlayer.cli.runtime", "runtime", "Run OCI bundles: create, start, state, kill, delete, run"),
    "completions": ("zlayer.cli.completions", "completions", "Print a shell completion script"),
    "serve": ("zlayer.cli.serve", "serve", "Run the zlayer daemon on this node"),
    "daemon": ("zlayer.cli.daemon", "daemon", "Run the daemon as a system service (install, start, stop, status)"),
    "deploy": ("zlayer.cli.deploy", "deploy", "Deploy a spec; returns once it runs (--dry-run prints the plan)"),
    "up": ("zlayer.cli.deploy", "up", "Deploy a spec in the foreground; Ctrl+C tears it down"),
    "down": ("zlayer.cli.down", "down", "Remove a deployment and all its replicas"),
    "ps": ("zlayer.cli.ps", "ps", "List services (or containers) and their replicas"),
    "status": ("zlayer.cli.status", "status", "Show the daemon and the health of its deployments"),
    "logs": ("zlayer.cli.logs", "logs", "Print a service's logs"),
    "exec": ("zlayer.cli.exec", "exec_", "Run a command in a replica of a service"),
    "stop": ("zlayer.cli.stop", "stop", "Stop a deployment's replicas (or one service's)"),
    "scale": ("zlayer.cli.scale", "scale", "Set a service's replica count (adaptive: within its min..max)"),
    "container": ("zlayer.cli.container", "container", "Inspect containers (ls, inspect, logs, stats, rm)"),
    "job": ("zlayer.cli.job", "job", "Trigger jobs and inspect executions; cron jobs"),
    "token": (
        "zlayer.cli.token",
        "token",
        "API bearer tokens (create, decode, show, info) and API keys (key create|ls|revoke)",
    ),
    "image": ("zlayer.cli.image", "image", "Manage local images (ls, inspect, rm, tag, push)"),
    "import": ("zlayer.cli.image", "import_", "Import an image from an OCI/docker archive or a rootfs tarball"),
    "export": ("zlayer.cli.image", "export", "Write a local image as an OCI archive"),
    "system": ("zlayer.cli.image", "system", "Node housekeeping (prune)"),
    "build": ("zlayer.cli.build", "build", "Build an image (Dockerfile, ZImagefile or runtime template) locally"),
    "runtimes": ("zlayer.cli.build", "runtimes", "List the runtime templates zlayer build can use"),
    "pipeline": ("zlayer.cli.build", "pipeline", "Build the images of a ZPipeline.yaml in dependency order"),
    "auth": ("zlayer.cli.identity", "auth", "Sign in to a daemon (bootstrap, login, logout, whoami)"),
    "user": ("zlayer.cli.identity", "user", "Manage accounts (ls, create, set-role, set-password, delete)"),
    "group": ("zlayer.cli.identity", "group", "Manage groups (list, create, delete, member add|remove)"),
    "permission": ("zlayer.cli.identity", "permission", "Grant and revoke levels on resources (list, grant, revoke)"),
    "audit": ("zlayer.cli.identity", "audit", "Show the audit log (tail)"),
    "node": (
        "zlayer.cli.node",
        "node",
        "Cluster nodes: init, join, generate-join-token, ls, status, label, drain...",
    ),
    "join": ("zlayer.cli.node", "join", "Join this node to the cluster a join token names"),
    "network": ("zlayer.cli.network", "network", "The cluster overlay on this node (ls, inspect, status, peers, dns)"),
    "secret": (
        "zlayer.cli.secret",
        "secret",
        "Encrypted secrets (ls, create, get, set, rotate, rm, import, export, grant)",
    ),
    "env": ("zlayer.cli.secret", "env", "Environments of secrets (ls, create, show, update, delete, run)"),
    "variable": ("zlayer.cli.secret", "variable", "Plain variables (list, set, get, unset)"),
    "run": ("zlayer.cli.secret", "run_cmd", "Run a local command with secrets as environment variables"),
    "pull": ("zlayer.cli.image", "pull_cmd", "Pull an image (or every image of the spec) into the local store"),
    "wasm": ("zlayer.cli.wasm", "wasm", "WebAssembly programs (build, export, push, validate, info)"),
    "docker": ("zlayer.cli.docker", "docker", "Docker's verbs on this node's containers and images (run, ps, ...)"),
}
