"""The gRPC servicer of `atelier.v1.TrainingData`: opt-outs, eligibility lookups, removal manifests.

Thin like the `ControlPlane` servicers beside it: authenticate (`auth.authorized`), parse, call the
domain module, convert. Domain errors go to the interceptor.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from typing_extensions import override

from control_plane import eligibility, optouts, removals
from control_plane.api_keys import Scope
from control_plane.bootstrap import ControlPlaneDeps
from control_plane.eligibility import Ineligibility
from control_plane.entrypoints import convert
from control_plane.entrypoints.auth import Authenticator
from control_plane.entrypoints.page_tokens import decode_removals_cursor, encode_removals_cursor
from protos.atelier.v1 import training_pb2, training_pb2_grpc

REMOVALS_PAGE_DEFAULT, REMOVALS_PAGE_MAX = 1000, 10_000

INELIGIBILITY_TO_PB: dict[Ineligibility, training_pb2.IneligibilityReason.ValueType] = {
    reason: training_pb2.IneligibilityReason.Value(f"INELIGIBILITY_REASON_{reason.name}") for reason in Ineligibility
}


class TrainingDataServicer(training_pb2_grpc.TrainingDataServicer):
    """Implements training.proto on `optouts`, `eligibility` and `removals`."""

    def __init__(self, deps: ControlPlaneDeps, database_up: Callable[[], bool] = lambda: True) -> None:
        """Serves with these dependencies; nothing is opened here. `database_up` as for `authorized`."""
        self._call = Authenticator(deps.pool, deps.clock, deps.user_tokens, database_up, deps.caller_facts).call
        self._policies = deps.policies
        self._clock = deps.clock

    @override
    def OptOut(self, request: training_pb2.OptOutRequest, context: grpc.ServicerContext) -> training_pb2.OptOutResponse:
        """Records an opt-out of an account's content or one item. Scope: privacy."""
        with self._call(context, Scope.PRIVACY, "OptOut") as (conn, caller):
            optout, created = optouts.record_optout(
                conn,
                tenant_id=caller.tenant_id,
                account_id=caller.act_on(convert.parse_uuid("account_id", request.account_id)),
                content_id=convert.parse_optional_uuid("content_id", request.content_id),
                source=request.source,
                actor=caller.actor,
                now=caller.now,
            )
        return training_pb2.OptOutResponse(opt_out=_optout_pb(optout), created=created)

    @override
    def ListOptOuts(
        self, request: training_pb2.ListOptOutsRequest, context: grpc.ServicerContext
    ) -> training_pb2.ListOptOutsResponse:
        """Lists an account's active opt-outs. Scope: privacy."""
        with self._call(context, Scope.PRIVACY, "ListOptOuts") as (conn, caller):
            found = optouts.list_optouts(
                conn,
                tenant_id=caller.tenant_id,
                account_id=caller.act_on(convert.parse_uuid("account_id", request.account_id)),
            )
        return training_pb2.ListOptOutsResponse(opt_outs=[_optout_pb(o) for o in found])

    @override
    def CheckTrainingEligibility(
        self, request: training_pb2.CheckTrainingEligibilityRequest, context: grpc.ServicerContext
    ) -> training_pb2.CheckTrainingEligibilityResponse:
        """Whether content with these bytes may be used for training. Scope: read."""
        with self._call(context, Scope.READ, "CheckTrainingEligibility") as (conn, caller):
            answer = eligibility.check_training_eligibility(
                conn, self._policies, tenant_id=caller.tenant_id, sha256=request.sha256, now=caller.now
            )
        return training_pb2.CheckTrainingEligibilityResponse(
            eligible=answer.eligible,
            reason=(
                INELIGIBILITY_TO_PB[answer.reason]
                if answer.reason is not None
                else training_pb2.INELIGIBILITY_REASON_UNSPECIFIED
            ),
            explanation=answer.explanation,
            matching_items=answer.matching_items,
            exported=answer.exported,
        )

    @override
    def ListRemovals(
        self, request: training_pb2.ListRemovalsRequest, context: grpc.ServicerContext
    ) -> training_pb2.ListRemovalsResponse:
        """An export's removal manifest from a cursor on. Scope: read."""
        with self._call(context, Scope.READ, "ListRemovals") as (conn, caller):
            export_id = convert.parse_uuid("export_id", request.export_id)
            page = removals.list_removals(
                conn,
                self._policies,
                tenant_id=caller.tenant_id,
                export_id=export_id,
                after_id=decode_removals_cursor(request.page_token),
                limit=convert.parse_page_size(
                    request.page_size, default=REMOVALS_PAGE_DEFAULT, maximum=REMOVALS_PAGE_MAX
                ),
                now=caller.now,
            )
        return training_pb2.ListRemovalsResponse(
            removals=[
                training_pb2.Removal(
                    item_id=r.salted_id,
                    reason=INELIGIBILITY_TO_PB[r.reason],
                    removed_at=convert.timestamp(r.removed_at),
                )
                for r in page.removals
            ],
            next_page_token=encode_removals_cursor(page.last_removal_id),
        )


def _optout_pb(optout: optouts.OptOut) -> training_pb2.OptOut:
    return training_pb2.OptOut(
        optout_id=optout.optout_id,
        account_id=str(optout.account_id),
        content_id=str(optout.content_id) if optout.content_id else "",
        sha256=optout.sha256 or "",
        source=optout.source,
        created_at=convert.timestamp(optout.created_at),
    )
