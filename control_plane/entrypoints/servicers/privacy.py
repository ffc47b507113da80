"""Privacy: consent records, data-subject requests (export, erasure), the audit trail, master-key rotation."""

from __future__ import annotations

import grpc
from typing_extensions import override

from control_plane import accounts, consent, dsr, key_rotation
from control_plane.api_keys import Scope
from control_plane.entrypoints import convert
from control_plane.entrypoints import page_tokens as tokens
from control_plane.entrypoints.servicers._base import ControlPlaneRpcs
from protos.atelier.v1 import control_plane_pb2

DSR_PAGE_DEFAULT, DSR_PAGE_MAX = 100, 1000
AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX = 100, 1000


class PrivacyRpcs(ControlPlaneRpcs):
    """The consent, data-subject request, audit and master-key RPCs of control_plane.proto."""

    @override
    def RecordConsent(
        self, request: control_plane_pb2.RecordConsentRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.RecordConsentResponse:
        """Appends a consent grant or withdrawal. Scope: privacy."""
        with self._call(context, Scope.PRIVACY, "RecordConsent") as (conn, caller):
            account_id = caller.act_on(convert.parse_uuid("account_id", request.account_id))
            purpose = convert.parse_enum(
                "purpose", request.purpose, control_plane_pb2.ConsentPurpose, convert.CONSENT_PURPOSE_FROM_PB
            )
            method = convert.parse_enum(
                "method", request.method, control_plane_pb2.ConsentMethod, convert.CONSENT_METHOD_FROM_PB
            )
            profile = self._profile(conn, caller)
            record = consent.record_consent(
                conn,
                tenant_id=caller.tenant_id,
                account_id=account_id,
                purpose=purpose,
                granted=request.granted,
                method=method,
                source=request.source,
                policy_version=request.policy_version or profile.policy_version,
                actor=caller.actor,
                now=caller.now,
            )
        return control_plane_pb2.RecordConsentResponse(record=convert.consent_record_pb(record))

    @override
    def GetConsents(
        self, request: control_plane_pb2.GetConsentsRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetConsentsResponse:
        """Returns the current state of every consent purpose. Scope: privacy."""
        with self._call(context, Scope.PRIVACY, "GetConsents") as (conn, caller):
            account_id = caller.act_on(convert.parse_uuid("account_id", request.account_id))
            overview = consent.current_consents(
                conn, tenant_id=caller.tenant_id, account_id=account_id, profile=self._profile(conn, caller)
            )
        return convert.consent_overview_pb(overview)

    @override
    def ListConsentHistory(
        self, request: control_plane_pb2.ListConsentHistoryRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListConsentHistoryResponse:
        """Returns every consent record of an account, oldest first. Scope: privacy."""
        with self._call(context, Scope.PRIVACY, "ListConsentHistory") as (conn, caller):
            account_id = caller.act_on(convert.parse_uuid("account_id", request.account_id))
            purpose = (
                convert.parse_enum(
                    "purpose", request.purpose, control_plane_pb2.ConsentPurpose, convert.CONSENT_PURPOSE_FROM_PB
                )
                if request.purpose
                else None
            )
            records = consent.consent_history(conn, tenant_id=caller.tenant_id, account_id=account_id, purpose=purpose)
        return control_plane_pb2.ListConsentHistoryResponse(records=[convert.consent_record_pb(r) for r in records])

    # --- data-subject requests --------------------------------------------------------------

    @override
    def RequestExport(
        self, request: control_plane_pb2.RequestExportRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.RequestExportResponse:
        """Records and answers an export request. Scope: privacy."""
        with self._call(context, Scope.PRIVACY, "RequestExport") as (conn, caller):
            answered = dsr.request_export(
                conn,
                self._blobs,
                self._keys,
                tenant_id=caller.tenant_id,
                account_id=caller.act_on(convert.parse_uuid("account_id", request.account_id)),
                profile=self._profile(conn, caller),
                policies=self._policies,
                actor=caller.actor,
                now=caller.now,
            )
        return control_plane_pb2.RequestExportResponse(request=convert.dsr_request_pb(answered))

    @override
    def GetExportArchive(
        self, request: control_plane_pb2.GetExportArchiveRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetExportArchiveResponse:
        """Returns a completed export's ZIP archive. Scope: privacy."""
        with self._call(context, Scope.PRIVACY, "GetExportArchive") as (conn, caller):
            archive = dsr.get_export_archive(
                conn,
                self._blobs,
                self._keys,
                tenant_id=caller.tenant_id,
                dsr_id=convert.parse_uuid("dsr_id", request.dsr_id),
                account_id=caller.own_account(None),
            )
        return control_plane_pb2.GetExportArchiveResponse(archive=archive, media_type=dsr.ARCHIVE_MEDIA_TYPE)

    @override
    def RequestErasure(
        self, request: control_plane_pb2.RequestErasureRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.RequestErasureResponse:
        """Records and carries out an erasure of one item or a whole account. Scope: privacy."""
        with self._call(context, Scope.PRIVACY, "RequestErasure") as (conn, caller):
            answered = dsr.request_erasure(
                conn,
                self._blobs,
                self._keys,
                tenant_id=caller.tenant_id,
                account_id=caller.act_on(convert.parse_uuid("account_id", request.account_id)),
                content_id=convert.parse_optional_uuid("content_id", request.content_id),
                profile=self._profile(conn, caller),
                actor=caller.actor,
                now=caller.now,
            )
        return control_plane_pb2.RequestErasureResponse(request=convert.dsr_request_pb(answered))

    @override
    def ListDsrRequests(
        self, request: control_plane_pb2.ListDsrRequestsRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListDsrRequestsResponse:
        """Lists the tenant's data-subject requests, earliest due first. Scope: privacy."""
        with self._call(context, Scope.PRIVACY, "ListDsrRequests") as (conn, caller):
            as_of = convert.parse_timestamp("as_of", request.as_of) if request.HasField("as_of") else caller.now
            requests = dsr.list_requests(
                conn,
                tenant_id=caller.tenant_id,
                account_id=caller.own_account(convert.parse_optional_uuid("account_id", request.account_id)),
                overdue_only=request.overdue_only,
                as_of=as_of,
                limit=convert.parse_page_size(request.page_size, default=DSR_PAGE_DEFAULT, maximum=DSR_PAGE_MAX),
            )
        return control_plane_pb2.ListDsrRequestsResponse(requests=[convert.dsr_request_pb(r) for r in requests])

    # --- audit and keys ---------------------------------------------------------------------

    @override
    def ListAuditEntries(
        self, request: control_plane_pb2.ListAuditEntriesRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListAuditEntriesResponse:
        """Lists the audit entries about an account, newest first. Scope: privacy."""
        with self._call(context, Scope.PRIVACY, "ListAuditEntries") as (conn, caller):
            account_id = caller.act_on(convert.parse_uuid("account_id", request.account_id))
            limit = convert.parse_page_size(request.page_size, default=AUDIT_PAGE_DEFAULT, maximum=AUDIT_PAGE_MAX)
            before = tokens.decode_audit_token(request.page_token, account_id)
            entries = accounts.audit_trail(
                conn, tenant_id=caller.tenant_id, account_id=account_id, limit=limit + 1, before_id=before
            )
        next_token = tokens.encode_audit_token(account_id, entries[limit - 1].id) if len(entries) > limit else ""
        return control_plane_pb2.ListAuditEntriesResponse(
            entries=[convert.audit_entry_pb(e) for e in entries[:limit]], next_page_token=next_token
        )

    @override
    def RotateMasterKey(
        self, request: control_plane_pb2.RotateMasterKeyRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.RotateMasterKeyResponse:
        """Re-wraps every live data key under a new master key. Scope: admin, of the operator's tenant."""
        with self._call(context, Scope.ADMIN, "RotateMasterKey") as (conn, caller):
            result = key_rotation.rotate_master_key(
                conn, self._keys, tenant_id=caller.tenant_id, actor=caller.actor, now=caller.now
            )
        return control_plane_pb2.RotateMasterKeyResponse(
            previous_key_id=result.previous_key_id, key_id=result.key_id, rewrapped_keys=result.rewrapped_keys
        )
