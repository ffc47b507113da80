"""What every area's RPCs of `atelier.v1.ControlPlane` share: the dependencies and one way in.

Each area (accounts and keys, credits, content and gallery, privacy) is a class of its own
module deriving from `ControlPlaneRpcs`; `ControlPlaneServicer` joins them into the one
servicer gRPC registers. An RPC authenticates through `_call`, which yields a connection and
the `Caller`, parses its request, calls one domain function and converts the answer. Domain
errors propagate to `ControlPlaneInterceptor`, which maps them to status codes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from control_plane import moderation
from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
from control_plane.admission import AdmissionRules
from control_plane.bootstrap import ControlPlaneDeps
from control_plane.db.pool import Connection
from control_plane.entrypoints.auth import Authenticator, Caller
from control_plane.policy import PolicyProfile
from control_plane.provenance import ProvenanceMarker
from protos.atelier.v1 import control_plane_pb2_grpc

BLOB_WRITER_THREADS = 8
"""Blob writes of StoreContent calls in flight at once; more wait their turn (fsync-bound)."""


class ControlPlaneRpcs(control_plane_pb2_grpc.ControlPlaneServicer):
    """The state every area's RPCs run on; nothing is opened here."""

    def __init__(
        self, *, deps: ControlPlaneDeps, admission: AdmissionRules, database_up: Callable[[], bool] = lambda: True
    ) -> None:
        # Borrows a connection, authenticates the caller at the server clock's time, checks the scope.
        self._call = Authenticator(deps.pool, deps.clock, deps.user_tokens, database_up, deps.caller_facts).call
        self._caller_facts = deps.caller_facts
        self._blobs = EncryptedBlobStore(deps.blobs)
        # StoreContent writes its blobs on these threads while its rows' statement runs.
        self._blob_writer = ThreadPoolExecutor(max_workers=BLOB_WRITER_THREADS, thread_name_prefix="blob-writer")
        self._keys = deps.keys
        self._policies = deps.policies
        self._clock = deps.clock
        self._admission = admission
        self._signing = deps.signing
        self._marker = ProvenanceMarker(deps.signing, deps.policies) if deps.signing is not None else None
        self._checkers = {
            name: deps.moderation(self._policies.get(name).moderation) for name in ("default", *self._policies.named)
        }

    def _profile(self, conn: Connection, caller: Caller) -> PolicyProfile:
        """The policy profile the caller's tenant follows."""
        return self._policies.for_tenant(conn, caller.tenant_id, self._caller_facts.policy_profiles)

    def _checker(self, profile: PolicyProfile) -> moderation.ModerationChecker:
        """The moderation checker of `profile` (the default profile's for an unnamed one)."""
        checker = self._checkers.get(profile.name)
        return checker if checker is not None else self._checkers["default"]
