"""The atelier control plane: accounts, API keys, credits and content on PostgreSQL.

Entry points import what they need from here; the server and database pieces load on first
use, so importing the package (for its config, say) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from control_plane.config import ConfigError, ControlPlaneConfig

if TYPE_CHECKING:
    from control_plane.api_keys import ensure_operator_key
    from control_plane.bootstrap import ControlPlaneDeps, bootstrap
    from control_plane.db.embedded import EmbeddedPostgres
    from control_plane.db.migrations import apply_migrations
    from control_plane.entrypoints.server import build_server, serve, wait_until_serving

__all__ = [
    "ConfigError",
    "ControlPlaneConfig",
    "ControlPlaneDeps",
    "EmbeddedPostgres",
    "apply_migrations",
    "bootstrap",
    "build_server",
    "ensure_operator_key",
    "serve",
    "wait_until_serving",
]

_LAZY = {
    "ControlPlaneDeps": "control_plane.bootstrap",
    "EmbeddedPostgres": "control_plane.db.embedded",
    "apply_migrations": "control_plane.db.migrations",
    "bootstrap": "control_plane.bootstrap",
    "build_server": "control_plane.entrypoints.server",
    "ensure_operator_key": "control_plane.api_keys",
    "serve": "control_plane.entrypoints.server",
    "wait_until_serving": "control_plane.entrypoints.server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'control_plane' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
