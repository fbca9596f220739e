"""``zlayer ps``: services (or containers) the daemon runs."""

from __future__ import annotations

from typing import Any

import click

from zlayer.cli.common import age, output_option, print_data, print_table, run


@click.command("ps")
@click.option("--deployment", help="Only this deployment.")
@click.option("-c", "--containers", "show_containers", is_flag=True, help="List containers instead of services.")
@output_option("--format")
def ps(deployment: str | None, show_containers: bool, output: str) -> None:
    """List services with their replicas, status and ports; -c lists containers."""

    async def go(client: Any) -> dict[str, Any]:
        deps = [d for d in await client.deployments() if deployment in (None, d["name"])]
        services, containers = [], []
        for d in deps:
            for s in await client.services(d["name"]):
                services.append({**s, "created_at": d["created_at"]})
        for ct in await client.ps():
            if deployment in (None, ct.get("deployment")):
                containers.append(ct)
        return {"services": services, "containers": containers}

    data = run(go)
    if output != "table":
        print_data(data, output)
        return
    if show_containers:
        rows: list[tuple[Any, ...]] = [
            (c.get("deployment"), c.get("service"), c["id"], c.get("replica"), c["image"], c.get("runtime") or "",
             c["state"] + (" (OOMKilled)" if c.get("oom_killed") else ""), (c.get("health") or {}).get("status", ""))
            for c in data["containers"]
        ]  # fmt: skip
        header = ["DEPLOYMENT", "SERVICE", "CONTAINER", "REPLICA", "IMAGE", "RUNTIME", "STATE", "HEALTH"]
        if any(c.get("node") for c in data["containers"]):  # in a cluster: which node runs each replica
            header.append("NODE")
            rows = [(*r, c.get("node") or "") for r, c in zip(rows, data["containers"], strict=True)]
        print_table(header, rows)
        return
    oom: dict[tuple[str, str], int] = {}
    for c in data["containers"]:
        if c.get("oom_killed"):
            key = (c.get("deployment") or "", c.get("service") or "")
            oom[key] = oom.get(key, 0) + 1
    srows: list[tuple[Any, ...]] = [
        (s["deployment"], s["name"], f"{s['replicas']}/{s['desired_replicas']}",
         s["status"] + (f", {n} OOMKilled" if (n := oom.get((s["deployment"], s["name"]))) else ""),
         ",".join(f"{e['port']}/{e['protocol']}" for e in s["endpoints"]), age(s["created_at"]))
        for s in data["services"]
    ]  # fmt: skip
    print_table(["DEPLOYMENT", "SERVICE", "REPLICAS", "STATUS", "PORTS", "AGE"], srows)
