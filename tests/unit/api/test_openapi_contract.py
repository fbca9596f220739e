"""The daemon serves ZLayer's routes for health, deployments, services, containers, images, jobs and cron with the
same paths and methods as ZLayer's OpenAPI document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

# The project's shared/ folder stands beside the repository (in CI too).
REFERENCE = Path(__file__).resolve().parents[3].parent / "shared" / "reference" / "zlayer-openapi.yaml"
ROUTES = [
    ("/health/live", "get"),
    ("/health/ready", "get"),
    ("/api/v1/deployments", "get"),
    ("/api/v1/deployments", "post"),
    ("/api/v1/deployments/{name}", "get"),
    ("/api/v1/deployments/{name}", "delete"),
    ("/api/v1/deployments/{name}/spec", "get"),
    ("/api/v1/deployments/{deployment}/services", "get"),
    ("/api/v1/deployments/{deployment}/services/{service}", "get"),
    ("/api/v1/deployments/{deployment}/services/{service}/scale", "post"),
    ("/api/v1/deployments/{deployment}/services/{service}/logs", "get"),
    ("/api/v1/containers", "get"),
    ("/api/v1/containers/{id}", "get"),
    ("/api/v1/containers/{id}", "delete"),
    ("/api/v1/containers/{id}/logs", "get"),
    ("/api/v1/containers/{id}/stats", "get"),
    ("/api/v1/containers/{id}/exec", "post"),
    ("/api/v1/images", "get"),
    ("/api/v1/images/pull", "post"),
    ("/api/v1/jobs/{name}/trigger", "post"),
    ("/api/v1/jobs/{name}/executions", "get"),
    ("/api/v1/jobs/{execution_id}/status", "get"),
    ("/api/v1/jobs/{execution_id}/cancel", "post"),
    ("/api/v1/cron", "get"),
    ("/api/v1/cron/{name}", "get"),
    ("/api/v1/cron/{name}/enable", "put"),
    ("/api/v1/cron/{name}/disable", "put"),
    ("/api/v1/cron/{name}/trigger", "post"),
]


@pytest.fixture(scope="module")
def served() -> dict[str, Any]:
    from zlayer.api import create_app

    doc: dict[str, Any] = create_app(None).openapi()  # type: ignore[arg-type]
    return doc


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    if not REFERENCE.exists():
        pytest.fail(f"ZLayer's OpenAPI document (the API contract) is missing: {REFERENCE}")
    doc: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    return doc


@pytest.mark.parametrize(("path", "method"), ROUTES)
def test_route_exists_like_zlayers(path: str, method: str, served: dict[str, Any], reference: dict[str, Any]) -> None:
    assert method in reference["paths"][path]
    assert method in served["paths"][path], f"{method.upper()} {path} is not served"
    want = {c for c in reference["paths"][path][method]["responses"] if c.startswith("2")}
    got = {c for c in served["paths"][path][method]["responses"] if c.startswith("2")}
    assert want <= got, f"{method.upper()} {path}: success codes {got}, ZLayer has {want}"


@pytest.mark.parametrize(
    "schema",
    ["DeploymentSummary", "DeploymentDetails", "ServiceSummary", "ServiceDetails", "ContainerInfo",
     "JobExecutionResponse", "CronJobResponse", "HealthResponse", "ContainerExecResponse"],
)  # fmt: skip
def test_response_models_carry_zlayers_required_fields(
    schema: str, served: dict[str, Any], reference: dict[str, Any]
) -> None:
    ref = reference["components"]["schemas"][schema]
    ours = served["components"]["schemas"][schema]
    assert set(ref.get("required", [])) <= set(ours.get("required", [])) | set(ours["properties"])
    assert set(ref["properties"]) <= set(ours["properties"])
