"""Serve's request-path settings for every Ray node."""

from __future__ import annotations

import pytest

from inference.serve_environment import serve_environment


def test_the_proxy_and_the_replicas_grpc_servers_take_the_same_largest_message() -> None:
    env = serve_environment(max_message_bytes=8 * 1024 * 1024)

    assert env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == env["RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"] == "8388608"
    assert env["RAY_SERVE_PROXY_USE_GRPC"] == "1"


def test_refuses_a_message_bound_that_admits_nothing() -> None:
    with pytest.raises(ValueError, match="max_message_bytes must be > 0, got 0"):
        serve_environment(max_message_bytes=0)
