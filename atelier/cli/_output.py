"""How commands print results and errors: one JSON object with --json, short lines otherwise."""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc


class CommandError(Exception):
    """A command failed in a way the user can act on; `code` is the gRPC code name, if any."""

    def __init__(self, message: str, code: str = "ERROR") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    @classmethod
    def from_rpc(cls, exc: grpc.RpcError) -> CommandError:
        code = exc.code()  # type: ignore[attr-defined]
        return cls(exc.details() or code.name, code.name)  # type: ignore[attr-defined]


def emit(result: dict[str, Any], text: str, *, json_output: bool) -> None:
    """Prints `result` as one JSON object, or `text` for a person."""
    print(json.dumps(result, sort_keys=True) if json_output else text)


def report_error(error: CommandError, *, json_output: bool) -> int:
    if json_output:
        print(json.dumps({"error": {"code": error.code, "message": error.message}}, sort_keys=True))
    else:
        prefix = f"{error.code}: " if error.code != "ERROR" else ""
        print(f"error: {prefix}{error.message}", file=sys.stderr)
    return 1
