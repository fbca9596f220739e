"""/api/v1/jobs and /api/v1/cron: trigger jobs, follow executions, cancel them; list, switch and trigger cron jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from zlayer.api.context import ApiContext, ctx
from zlayer.api.models import (
    U32_MAX,
    CronJobResponse,
    CronStatusResponse,
    JobExecutionResponse,
    TriggerCronResponse,
    TriggerJobResponse,
)
from zlayer.errors import NotFoundError
from zlayer.state import CronRecord, JobExecutionRecord

router = APIRouter(tags=["Jobs"])


def _execution(e: JobExecutionRecord) -> JobExecutionResponse:
    return JobExecutionResponse(
        id=e.id,
        job_name=e.job_name,
        status=e.status,
        trigger=e.trigger,
        started_at=e.started_at or None,
        completed_at=e.completed_at or None,
        duration_ms=e.duration_ms,
        exit_code=e.exit_code,
        error=e.error or None,
        logs=e.logs or None,
    )


def _cron(r: CronRecord) -> CronJobResponse:
    return CronJobResponse(
        name=r.name, schedule=r.schedule, enabled=r.enabled, last_run=r.last_run or None, next_run=r.next_run or None
    )


@router.post("/api/v1/jobs/{name}/trigger", status_code=202, response_model=TriggerJobResponse)
async def trigger_job(name: str, deployment: str | None = None, c: ApiContext = Depends(ctx)) -> TriggerJobResponse:
    exec_id = await c.jobs.trigger(name, deployment, trigger="endpoint")
    return TriggerJobResponse(execution_id=exec_id, message=f"job {name} triggered")


@router.get("/api/v1/jobs/{name}/executions", response_model=list[JobExecutionResponse])
async def list_executions(
    name: str,
    limit: Annotated[int, Query(ge=0, le=U32_MAX)] = 100,
    status: str | None = None,
    c: ApiContext = Depends(ctx),
) -> list[JobExecutionResponse]:
    out = await c.store.list_job_executions(name, limit=limit)
    return [_execution(e) for e in out if status is None or e.status == status]


@router.get("/api/v1/jobs/{execution_id}/status", response_model=JobExecutionResponse)
async def execution_status(execution_id: str, c: ApiContext = Depends(ctx)) -> JobExecutionResponse:
    e = await c.store.get_job_execution(execution_id)
    if e is None:
        raise NotFoundError(f"job execution {execution_id!r} not found")
    return _execution(e)


@router.post("/api/v1/jobs/{execution_id}/cancel")
async def cancel_execution(execution_id: str, c: ApiContext = Depends(ctx)) -> Response:
    await c.jobs.cancel(execution_id)
    return Response(status_code=200)


@router.get("/api/v1/cron", response_model=list[CronJobResponse], tags=["Cron"])
async def list_cron(c: ApiContext = Depends(ctx)) -> list[CronJobResponse]:
    return [_cron(r) for r in await c.store.list_cron()]


@router.get("/api/v1/cron/{name}", response_model=CronJobResponse, tags=["Cron"])
async def get_cron(name: str, deployment: str | None = None, c: ApiContext = Depends(ctx)) -> CronJobResponse:
    return _cron(await c.jobs.get_cron(name, deployment))


@router.put("/api/v1/cron/{name}/enable", response_model=CronStatusResponse, tags=["Cron"])
async def enable_cron(name: str, deployment: str | None = None, c: ApiContext = Depends(ctx)) -> CronStatusResponse:
    r = await c.jobs.set_cron_enabled(name, True, deployment)
    return CronStatusResponse(name=r.name, enabled=True, message=f"cron job {name} enabled; next run {r.next_run}")


@router.put("/api/v1/cron/{name}/disable", response_model=CronStatusResponse, tags=["Cron"])
async def disable_cron(name: str, deployment: str | None = None, c: ApiContext = Depends(ctx)) -> CronStatusResponse:
    r = await c.jobs.set_cron_enabled(name, False, deployment)
    return CronStatusResponse(name=r.name, enabled=False, message=f"cron job {name} disabled")


@router.post("/api/v1/cron/{name}/trigger", status_code=202, response_model=TriggerCronResponse, tags=["Cron"])
async def trigger_cron(name: str, deployment: str | None = None, c: ApiContext = Depends(ctx)) -> TriggerCronResponse:
    r = await c.jobs.get_cron(name, deployment)
    exec_id = await c.jobs.trigger(name, r.deployment, trigger="cli")
    return TriggerCronResponse(execution_id=exec_id, message=f"cron job {name} triggered")
