"""Observability: Prometheus metrics of the daemon."""

from __future__ import annotations

from zlayer.observability.metrics import Metrics

__all__ = ["Metrics"]
