"""Credits: grants, balances, the ledger, and the reserve → commit | release cycle of a generation."""

from __future__ import annotations

import grpc
from typing_extensions import override

from control_plane import admission, credits
from control_plane.api_keys import Scope
from control_plane.entrypoints import convert
from control_plane.entrypoints import page_tokens as tokens
from control_plane.entrypoints.servicers._base import ControlPlaneRpcs
from protos.atelier.v1 import control_plane_pb2

LEDGER_PAGE_DEFAULT, LEDGER_PAGE_MAX = 50, 500


class CreditRpcs(ControlPlaneRpcs):
    """The credit RPCs of control_plane.proto."""

    @override
    def GrantCredits(
        self, request: control_plane_pb2.GrantCreditsRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GrantCreditsResponse:
        """Adds credits to an account. Scope: admin."""
        with self._call(context, Scope.ADMIN, "GrantCredits") as (conn, caller):
            balance = credits.grant_credits(
                conn,
                tenant_id=caller.tenant_id,
                account_id=caller.act_on(convert.parse_uuid("account_id", request.account_id)),
                amount=request.amount,
                reason=request.reason,
                actor=caller.actor,
                now=caller.now,
            )
        return control_plane_pb2.GrantCreditsResponse(balance=convert.balance_pb(balance))

    @override
    def GetBalance(
        self, request: control_plane_pb2.GetBalanceRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetBalanceResponse:
        """Returns an account's balance. Scope: read."""
        with self._call(context, Scope.READ, "GetBalance") as (conn, caller):
            account_id = caller.act_on(convert.parse_uuid("account_id", request.account_id))
            balance = credits.get_balance(conn, tenant_id=caller.tenant_id, account_id=account_id)
        return control_plane_pb2.GetBalanceResponse(balance=convert.balance_pb(balance))

    @override
    def ListLedger(
        self, request: control_plane_pb2.ListLedgerRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListLedgerResponse:
        """Lists an account's ledger, newest first. Scope: read."""
        with self._call(context, Scope.READ, "ListLedger") as (conn, caller):
            account_id = caller.act_on(convert.parse_uuid("account_id", request.account_id))
            page = credits.list_ledger(
                conn,
                tenant_id=caller.tenant_id,
                account_id=account_id,
                limit=convert.parse_page_size(request.page_size, default=LEDGER_PAGE_DEFAULT, maximum=LEDGER_PAGE_MAX),
                before_entry_id=tokens.decode_ledger_token(request.page_token, account_id),
            )
        next_token = (
            tokens.encode_ledger_token(account_id, page.next_before_entry_id)
            if page.next_before_entry_id is not None
            else ""
        )
        return control_plane_pb2.ListLedgerResponse(
            entries=[convert.ledger_entry_pb(entry) for entry in page.entries], next_page_token=next_token
        )

    @override
    def ReserveCredits(
        self, request: control_plane_pb2.ReserveCreditsRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ReserveCreditsResponse:
        """Holds credits for a generation. Scope: generate."""
        with self._call(context, Scope.GENERATE, "ReserveCredits") as (conn, caller):
            idempotency = request.idempotency if request.HasField("idempotency") else None
            wanted = admission.GenerationRequest(
                account_id=caller.act_on(convert.parse_uuid("account_id", request.account_id)),
                amount=request.amount,
                purpose=request.purpose,
                prompt=request.prompt,
                ttl_seconds=request.ttl_seconds,
                idempotency_key=idempotency.key if idempotency is not None else None,
                caller_fingerprint=idempotency.request_fingerprint if idempotency is not None else b"",
            )
            profile = self._profile(conn, caller)
            reserved = admission.admit_generation(
                conn,
                self._admission,
                self._checker(profile),
                profile,
                wanted,
                tenant_id=caller.tenant_id,
                actor=caller.actor,
                now=caller.now,
            )
        return control_plane_pb2.ReserveCreditsResponse(
            reservation=convert.reservation_pb(reserved.reservation),
            balance=convert.balance_pb(reserved.balance),
            replayed=reserved.replayed_content_ids is not None,
            replayed_content_ids=[str(content_id) for content_id in reserved.replayed_content_ids or ()],
        )

    @override
    def CommitReservation(
        self, request: control_plane_pb2.CommitReservationRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.CommitReservationResponse:
        """Charges a held reservation. Scope: generate."""
        with self._call(context, Scope.GENERATE, "CommitReservation") as (conn, caller):
            reservation, balance = credits.commit_reservation(
                conn,
                tenant_id=caller.tenant_id,
                reservation_id=convert.parse_uuid("reservation_id", request.reservation_id),
                actor=caller.actor,
                now=caller.now,
                account_id=caller.own_account(None),
            )
        return control_plane_pb2.CommitReservationResponse(
            reservation=convert.reservation_pb(reservation), balance=convert.balance_pb(balance)
        )

    @override
    def ReleaseReservation(
        self, request: control_plane_pb2.ReleaseReservationRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ReleaseReservationResponse:
        """Returns a held reservation's credits. Scope: generate."""
        with self._call(context, Scope.GENERATE, "ReleaseReservation") as (conn, caller):
            reservation, balance = credits.release_reservation(
                conn,
                tenant_id=caller.tenant_id,
                reservation_id=convert.parse_uuid("reservation_id", request.reservation_id),
                actor=caller.actor,
                now=caller.now,
                account_id=caller.own_account(None),
            )
        return control_plane_pb2.ReleaseReservationResponse(
            reservation=convert.reservation_pb(reservation), balance=convert.balance_pb(balance)
        )

    # --- content ----------------------------------------------------------------------------
