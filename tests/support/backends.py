"""Backend objects (powerlb.backend.Backend) for tests that need no server behind them."""

from __future__ import annotations

from typing import Any

from powerlb.backend import Backend, BackendSpec


def make_backend(port: int = 9001, host: str = "127.0.0.1", weight: int = 1, **spec: Any) -> Backend:
    """A Backend for ``scheme://host:port`` (``scheme`` "http" unless given); ``spec`` are the other
    BackendSpec fields (``backup``, ``scheme``)."""
    scheme = spec.get("scheme", "http")
    return Backend(BackendSpec(f"{scheme}://{host}:{port}", host, port, weight, **spec))
