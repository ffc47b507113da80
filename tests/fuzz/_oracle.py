"""The fuzzers' oracle: what every answer and the database afterwards must satisfy.

- The status code is OK or one the RPC documents; never INTERNAL or UNKNOWN.
- The details are one line for a person: no traceback, SQL, driver name or file path.
- A refused call changed nothing (every data table hashes the same before and after),
  except the writes its table entry documents (a blocked prompt's moderation flag).
- A call by one tenant's key, refused or not, changed nothing the other tenant owns.
- An answer to one tenant's key contains none of the other tenant's ids, hashes or prompts.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import grpc

from control_plane.db.pool import Pool
from tests.fuzz._rpcs import NEVER, FuzzEntry

FORBIDDEN_IN_DETAILS = re.compile(
    r"Traceback|psycopg|Psycopg|\bSELECT\b|\bINSERT INTO\b|\bWHERE\b|File \"|\.py\b|site-packages|/tmp/|/work/"
    r"|/home/|violates|constraint \"|duplicate key|relation \"|Exception|Error\(|internal error|Errno"
)
"""What a status message must never contain: it is for the caller, details go to the logs."""

CASES: Counter[tuple[str, str]] = Counter()
"""(service, kind of case) -> cases run this session; the terminal summary prints it."""

OBSERVED: dict[str, set[str]] = defaultdict(set)
"""RPC -> the codes it answered to another tenant's ids (the isolation test fills it)."""

MAX_DETAILS_CHARS = 600
"""A one-line message; longer means input was echoed back."""

_ACCOUNT_OWNED = (
    "account_personal",
    "account_keys",
    "credit_balances",
    "reservations",
    "credit_ledger",
    "content",
    "consents",
    "optouts",
    "dsr_requests",
    "moderation_flags",
    "export_items",
)
_TENANT_ROWS: dict[str, str] = {
    "tenants": "tenant_id = %(t)s",
    "accounts": "tenant_id = %(t)s",
    "api_keys": "tenant_id = %(t)s",
    "usage_daily": "tenant_id = %(t)s",
    "audit_log": (
        "tenant_id = %(t)s OR target_id IN (SELECT account_id::text FROM accounts WHERE tenant_id = %(t)s)"
        " OR details ->> 'account_id' IN (SELECT account_id::text FROM accounts WHERE tenant_id = %(t)s)"
    ),
    **{table: "account_id IN (SELECT account_id FROM accounts WHERE tenant_id = %(t)s)" for table in _ACCOUNT_OWNED},
}
"""Per table, which rows belong to tenant %(t)s."""


def _hash_of(table: str, where: str = "true") -> str:
    return (
        f"SELECT '{table}', md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t WHERE {where}"
    )


class Fingerprints:
    """Hashes of the database's rows: of every data table, and per tenant."""

    def __init__(self, pool: Pool, tables: list[str]) -> None:
        self._pool = pool
        self._all_sql = " UNION ALL ".join(_hash_of(table) for table in tables)
        self._tenant_sql = " UNION ALL ".join(_hash_of(table, where) for table, where in _TENANT_ROWS.items())

    def everything(self) -> dict[str, str]:
        """Table -> hash of all its rows."""
        with self._pool.connection() as conn:
            return {table: digest for table, digest in conn.execute(self._all_sql).fetchall()}

    def tenant(self, tenant_id: str) -> dict[str, str]:
        """Table -> hash of the rows that belong to `tenant_id`."""
        with self._pool.connection() as conn:
            return {table: digest for table, digest in conn.execute(self._tenant_sql, {"t": tenant_id}).fetchall()}


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """Tables whose hash differs."""
    return {table for table in before.keys() | after.keys() if before.get(table) != after.get(table)}


@dataclass(frozen=True)
class Outcome:
    """How a call ended: OK with the response bytes, or a status code and its details."""

    code: grpc.StatusCode
    details: str
    response: bytes


def call(callable_: grpc.UnaryUnaryMultiCallable, request: object, metadata: tuple[tuple[str, str], ...]) -> Outcome:
    """Calls and records the outcome; a serialized response is kept for leak checks."""
    try:
        response = callable_(request, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "", b"")
    raw = response if isinstance(response, bytes) else response.SerializeToString()
    return Outcome(grpc.StatusCode.OK, "", raw)


def check_answer(name: str, entry: FuzzEntry, outcome: Outcome) -> None:
    """Fails when the code is not documented for the RPC or the details leak internals."""
    code = outcome.code
    assert code not in NEVER, f"{name} answered {code.name}: {outcome.details!r}"
    assert code == grpc.StatusCode.OK or code in entry.refusals, (
        f"{name} answered {code.name}, not among {sorted(c.name for c in entry.refusals)}: {outcome.details!r}"
    )
    if code != grpc.StatusCode.OK:
        assert outcome.details, f"{name} refused with {code.name} and no message"
        assert not FORBIDDEN_IN_DETAILS.search(outcome.details), f"{name} leaked internals: {outcome.details!r}"
        assert len(outcome.details) <= MAX_DETAILS_CHARS, f"{name} sent {len(outcome.details)} chars of details"
        assert "\n" not in outcome.details, f"{name} sent a multi-line message: {outcome.details!r}"


def check_no_leak(name: str, outcome: Outcome, secrets: list[bytes], request: bytes) -> None:
    """Fails when the response, or the details beyond what the request said, contain one of `secrets`.

    A refusal may name the id the caller sent ("account X not found"); a response may not
    contain another tenant's id at all, echoed or not.
    """
    details = outcome.details.encode()
    leaked = [s.decode() for s in secrets if s in outcome.response or (s in details and s not in request)]
    assert not leaked, f"{name} showed another tenant's data: {leaked}"
