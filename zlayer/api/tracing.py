"""A span per API request, when the daemon exports traces (``observability.tracing``): named ``METHOD /route/{param}``
after the route that served it, with ZLayer's and OpenTelemetry's HTTP attributes, and the caller's W3C
``traceparent`` as its parent, so a deploy's spans hang under the request that started it."""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

tracer = trace.get_tracer("zlayer.api")


def tracing_configured() -> bool:
    """A tracer provider of the SDK is installed (not the API's no-op proxy)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


class Traced:
    """Pure ASGI middleware (it does not buffer streaming responses such as events and logs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        attrs: dict[str, Any] = {"http.request.method": method, "url.path": scope.get("path", "")}
        with tracer.start_as_current_span(method, context=propagate.extract(headers), kind=SpanKind.SERVER,
                                          attributes=attrs) as span:  # fmt: skip

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    route = getattr(scope.get("route"), "path", None)
                    if route:
                        span.set_attribute("http.route", route)
                        span.update_name(f"{method} {route}")
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, sending)
