"""OpenTelemetry traces over OTLP, configured by ZLayer's variables, for the API's requests and each deploy's steps.

Off unless asked for: ``OTEL_TRACES_ENABLED=true``, or an ``OTEL_EXPORTER_OTLP_ENDPOINT`` (then off only with
``OTEL_TRACES_ENABLED=false``). ``OTEL_EXPORTER_OTLP_PROTOCOL`` picks ``grpc`` (the default, as ZLayer's) or
``http/protobuf``; the exporters read the endpoint, headers and timeouts from the standard ``OTEL_EXPORTER_OTLP_*``
variables themselves. The resource carries ``service.name`` (``OTEL_SERVICE_NAME``, default ``zlayer``),
``service.version`` and ``deployment.environment`` (``DEPLOYMENT_ENVIRONMENT``); ``OTEL_TRACES_SAMPLER_ARG`` is the
sampled ratio (>= 1 all, <= 0 none, else that ratio of new traces). Spans leave in batches as ZLayer's do (queue
2048, every 5 s, 512 at a time). Code that makes spans uses ``opentelemetry.trace`` directly: without a provider set
here those calls cost nothing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from zlayer._version import __version__
from zlayer.errors import UsageError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

PROTOCOLS = ("grpc", "http/protobuf")


def _enabled(env: Mapping[str, str]) -> bool:
    flag = env.get("OTEL_TRACES_ENABLED", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    return flag in ("1", "true", "yes", "on") or bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())


def _ratio(env: Mapping[str, str]) -> float:
    text = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not text:
        return 1.0
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"OTEL_TRACES_SAMPLER_ARG={text!r}: expected a ratio such as 0.25",
                         where="OTEL_TRACES_SAMPLER_ARG") from None  # fmt: skip


def setup_tracing(env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Install the global tracer provider the variables ask for; None (and nothing installed) when tracing is off.
    A bad protocol or ratio is a usage error naming the variable, before the daemon starts."""
    env = os.environ if env is None else env
    if not _enabled(env):
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if protocol not in PROTOCOLS:
        raise UsageError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: expected one of {', '.join(PROTOCOLS)}",
                         where="OTEL_EXPORTER_OTLP_PROTOCOL")  # fmt: skip
    ratio = _ratio(env)
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    sampler = ALWAYS_ON if ratio >= 1 else ALWAYS_OFF if ratio <= 0 else ParentBased(TraceIdRatioBased(ratio))
    attrs = {"service.name": env.get("OTEL_SERVICE_NAME") or "zlayer", "service.version": __version__}
    if env.get("DEPLOYMENT_ENVIRONMENT"):
        attrs["deployment.environment"] = env["DEPLOYMENT_ENVIRONMENT"]
    provider = TracerProvider(resource=Resource.create(attrs), sampler=sampler)
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(), max_queue_size=2048, schedule_delay_millis=5000, max_export_batch_size=512
        )
    )
    trace.set_tracer_provider(provider)
    return provider
