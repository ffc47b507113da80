"""What each RPC of the control plane may answer: the fuzzers' table, one line per RPC.

Every method of the services in `SERVICES` must have an entry (a test fails otherwise), so
a new RPC cannot ship unfuzzed. Adding one is one line:

    "ControlPlane/ListApiKeys": rpc(Scope.ADMIN),

`rpc(scope, *codes)` names the scope the RPC needs (None: any valid key) and the refusals it
may give beyond the ones every RPC may give (`COMMON_REFUSALS`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import message_factory

from control_plane.api_keys import Scope
from protos.atelier.v1 import control_plane_pb2, training_pb2

Code = grpc.StatusCode

SERVICES: tuple[pb_descriptor.ServiceDescriptor, ...] = (
    control_plane_pb2.DESCRIPTOR.services_by_name["ControlPlane"],
    training_pb2.DESCRIPTOR.services_by_name["TrainingData"],
)
"""The services the control plane's server registers and the fuzzers cover."""

COMMON_REFUSALS = frozenset({Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.UNAUTHENTICATED, Code.PERMISSION_DENIED})
"""Refusals any RPC may give (control_plane.proto's header; DESIGN.md §8)."""

NEVER = frozenset({Code.INTERNAL, Code.UNKNOWN, Code.DATA_LOSS, Code.UNIMPLEMENTED})
"""Codes that mean the server did not handle a request: never acceptable."""


@dataclass(frozen=True)
class FuzzEntry:
    """What one RPC may answer.

    Attributes:
        scope: The scope it needs; None when any valid key may call it.
        refusals: Every status code besides OK it may answer with.
        writes_when_refused: Tables a documented refusal may write (a blocked prompt
            records a moderation flag and its audit row).
        global_tables: Tables its success may change for every tenant (master-key rotation
            re-wraps all data keys).
    """

    scope: Scope | None
    refusals: frozenset[grpc.StatusCode]
    writes_when_refused: frozenset[str] = frozenset()
    global_tables: frozenset[str] = frozenset()


def rpc(
    scope: Scope | None,
    *codes: grpc.StatusCode,
    writes_when_refused: frozenset[str] = frozenset(),
    global_tables: frozenset[str] = frozenset(),
) -> FuzzEntry:
    """An entry allowing the common refusals plus `codes`."""
    return FuzzEntry(scope, COMMON_REFUSALS | frozenset(codes), writes_when_refused, global_tables)


FP, RE, AE = Code.FAILED_PRECONDITION, Code.RESOURCE_EXHAUSTED, Code.ALREADY_EXISTS
_FLAGS = frozenset({"moderation_flags", "audit_log"})

ENTRIES: dict[str, FuzzEntry] = {
    "ControlPlane/CreateAccount": rpc(Scope.ADMIN, FP),
    "ControlPlane/GetAccount": rpc(Scope.READ),
    "ControlPlane/CreateApiKey": rpc(Scope.ADMIN, AE),
    "ControlPlane/WhoAmI": rpc(None),
    "ControlPlane/ListApiKeys": rpc(Scope.ADMIN),
    "ControlPlane/RotateApiKey": rpc(Scope.ADMIN, FP),
    "ControlPlane/RevokeApiKey": rpc(Scope.ADMIN, FP),
    "ControlPlane/GrantCredits": rpc(Scope.ADMIN, FP),
    "ControlPlane/GetBalance": rpc(Scope.READ),
    "ControlPlane/ListLedger": rpc(Scope.READ),
    "ControlPlane/ReserveCredits": rpc(Scope.GENERATE, FP, RE, writes_when_refused=_FLAGS),
    "ControlPlane/CommitReservation": rpc(Scope.GENERATE, FP),
    "ControlPlane/ReleaseReservation": rpc(Scope.GENERATE, FP),
    # An output the classifier withheld (OUTPUT_BLOCKED) leaves its flags and releases its reservation.
    "ControlPlane/StoreContent": rpc(
        Scope.GENERATE, FP, writes_when_refused=_FLAGS | {"reservations", "credit_balances"}
    ),
    "ControlPlane/GetContent": rpc(Scope.READ, FP),
    "ControlPlane/ListContent": rpc(Scope.READ),
    "ControlPlane/SetVisibility": rpc(Scope.PRIVACY, FP),
    "ControlPlane/SetDefaultVisibility": rpc(Scope.PRIVACY, FP),
    "ControlPlane/ListPublicGallery": rpc(Scope.READ),
    "ControlPlane/RecordConsent": rpc(Scope.PRIVACY, FP),
    "ControlPlane/GetConsents": rpc(Scope.PRIVACY),
    "ControlPlane/ListConsentHistory": rpc(Scope.PRIVACY),
    "ControlPlane/RequestExport": rpc(Scope.PRIVACY, FP),
    "ControlPlane/GetExportArchive": rpc(Scope.PRIVACY, FP),
    "ControlPlane/RequestErasure": rpc(Scope.PRIVACY, FP),
    "ControlPlane/ListDsrRequests": rpc(Scope.PRIVACY),
    "ControlPlane/ListAuditEntries": rpc(Scope.PRIVACY),
    "ControlPlane/RotateMasterKey": rpc(Scope.ADMIN, FP, global_tables=frozenset({"account_keys"})),
    "ControlPlane/SetIdentityProvider": rpc(Scope.ADMIN),
    "ControlPlane/GetIdentityProvider": rpc(Scope.ADMIN),
    "ControlPlane/VerifyProvenance": rpc(Scope.READ),
    "TrainingData/OptOut": rpc(Scope.PRIVACY, FP),
    "TrainingData/ListOptOuts": rpc(Scope.PRIVACY),
    "TrainingData/CheckTrainingEligibility": rpc(Scope.READ),
    "TrainingData/ListRemovals": rpc(Scope.READ),
}
"""Service/Method -> what it may answer. One line per RPC; see the module docstring."""


@dataclass(frozen=True)
class Rpc:
    """One method of a fuzzed service, with its message classes and table entry."""

    method: pb_descriptor.MethodDescriptor
    entry: FuzzEntry

    @property
    def name(self) -> str:
        """`Service/Method`, the table's key."""
        return f"{self.method.containing_service.name}/{self.method.name}"

    @property
    def path(self) -> str:
        """The gRPC method path, `/atelier.v1.Service/Method`."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def request_class(self) -> type[pb_message.Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[pb_message.Message]:
        return message_factory.GetMessageClass(self.method.output_type)


def methods() -> Iterator[pb_descriptor.MethodDescriptor]:
    """Every method of every fuzzed service, in declaration order."""
    for service in SERVICES:
        yield from service.methods


def method_names() -> list[str]:
    """`Service/Method` of every method the descriptors declare."""
    return [f"{m.containing_service.name}/{m.name}" for m in methods()]


def fuzzed_rpcs() -> list[Rpc]:
    """Every declared method that has an entry (the coverage test fails on the others)."""
    return [
        Rpc(m, ENTRIES[f"{m.containing_service.name}/{m.name}"])
        for m in methods()
        if f"{m.containing_service.name}/{m.name}" in ENTRIES
    ]


def unary(channel: grpc.Channel, target: Rpc) -> grpc.UnaryUnaryMultiCallable:
    """A callable for `target` that takes and returns messages."""
    return channel.unary_unary(
        target.path,
        request_serializer=target.request_class.SerializeToString,
        response_deserializer=target.response_class.FromString,
    )


def raw_unary(channel: grpc.Channel, target: Rpc) -> grpc.UnaryUnaryMultiCallable:
    """A callable for `target` that sends bytes as they are and returns the response bytes."""
    return channel.unary_unary(target.path, request_serializer=None, response_deserializer=None)
