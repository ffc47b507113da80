"""The gRPC servicer of `atelier.v1.ControlPlane`: authenticate, parse, call the domain, reply.

Domain errors propagate to `ControlPlaneInterceptor`, which maps them to status codes; this
module never sets a status itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from uuid import UUID

import grpc
from typing_extensions import override

from control_plane import _convert as convert
from control_plane import _page_tokens as tokens
from control_plane import accounts, api_keys, audit, consent, content, credits, dsr, moderation, rate_limits, tenants
from control_plane._auth import authorized
from control_plane._interceptor import current_request_id
from control_plane.accounts import AgeEvidence, Tier, Visibility
from control_plane.api_keys import Principal, Scope
from control_plane.bootstrap import ControlPlaneDeps
from control_plane.config import ControlPlaneConfig
from control_plane.db.pool import Connection
from control_plane.encrypted_blobs import EncryptedBlobStore
from control_plane.errors import InvalidArgument, PermissionDenied
from control_plane.policy import PolicyProfile
from protos.atelier.v1 import common_pb2, control_plane_pb2, control_plane_pb2_grpc

LEDGER_PAGE_DEFAULT, LEDGER_PAGE_MAX = 50, 500
CONTENT_PAGE_DEFAULT, CONTENT_PAGE_MAX = 20, 100
DSR_PAGE_DEFAULT, DSR_PAGE_MAX = 100, 1000
AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX = 100, 1000
API_KEY_PAGE_DEFAULT, API_KEY_PAGE_MAX = 100, 500
MAX_CALLER_FINGERPRINT_BYTES = 64


class ControlPlaneServicer(control_plane_pb2_grpc.ControlPlaneServicer):
    """Implements every RPC of control_plane.proto on the domain modules."""

    def __init__(self, *, config: ControlPlaneConfig, deps: ControlPlaneDeps) -> None:
        """Serves with these dependencies; nothing is opened here."""
        self._config = config
        self._pool = deps.pool
        self._blobs = EncryptedBlobStore(deps.blobs)
        self._keys = deps.keys
        self._policies = deps.policies
        self._clock = deps.clock
        self._account_limiter = rate_limits.account_rate_limiter(config, deps.clock)
        self._concurrency = (
            credits.ConcurrencyLimit(config.max_concurrent_generations, float(config.concurrency_retry_s))
            if config.max_concurrent_generations
            else None
        )
        self._checkers = {
            name: deps.moderation(self._policies.get(name).moderation) for name in ("default", *self._policies.named)
        }

    # --- accounts ---------------------------------------------------------------------------

    @override
    def CreateAccount(
        self, request: control_plane_pb2.CreateAccountRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.CreateAccountResponse:
        """Creates an account of the caller's tenant. Scope: admin."""
        with self._authorized(context, Scope.ADMIN, "CreateAccount") as (conn, principal):
            profile = self._profile(conn, principal)
            tier = convert.parse_enum("tier", request.tier, control_plane_pb2.Tier, convert.TIER_FROM_PB, Tier.FREE)
            visibility = convert.parse_enum(
                "default_visibility",
                request.default_visibility,
                common_pb2.Visibility,
                convert.VISIBILITY_FROM_PB,
                Visibility(profile.default_visibility),
            )
            evidence = AgeEvidence(
                birth_date=convert.parse_birth_date(request.birth_date),
                age_attested=request.age_attested or None,
            )
            account, balance = accounts.create_account(
                conn,
                tenant_id=principal.tenant_id,
                evidence=evidence,
                minimum_age=profile.minimum_age,
                guardian_age=profile.guardian_age,
                default_visibility=visibility,
                tier=tier,
                initial_credits=request.initial_credits,
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.CreateAccountResponse(
            account=convert.account_pb(account), balance=convert.balance_pb(balance)
        )

    @override
    def GetAccount(
        self, request: control_plane_pb2.GetAccountRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetAccountResponse:
        """Returns an account of the caller's tenant. Scope: read."""
        with self._authorized(context, Scope.READ, "GetAccount") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            account = accounts.get_account(conn, tenant_id=principal.tenant_id, account_id=account_id)
        return control_plane_pb2.GetAccountResponse(account=convert.account_pb(account))

    # --- API keys ---------------------------------------------------------------------------

    @override
    def CreateApiKey(
        self, request: control_plane_pb2.CreateApiKeyRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.CreateApiKeyResponse:
        """Creates a key of the caller's tenant and returns its secret once. Scope: admin."""
        now = self._clock.now()
        with self._authorized(context, Scope.ADMIN, "CreateApiKey", now) as (conn, principal):
            if not request.scopes:
                raise InvalidArgument("scopes", "must name at least one scope")
            scopes = [
                convert.parse_enum(f"scopes[{i}]", number, control_plane_pb2.Scope, convert.SCOPE_FROM_PB)
                for i, number in enumerate(request.scopes)
            ]
            key, secret = api_keys.create_api_key(
                conn,
                tenant_id=principal.tenant_id,
                name=request.name,
                scopes=scopes,
                actor=principal.actor(current_request_id()),
                now=now,
            )
        return control_plane_pb2.CreateApiKeyResponse(key=convert.api_key_pb(key, now), secret=secret)

    @override
    def WhoAmI(
        self, request: control_plane_pb2.WhoAmIRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.WhoAmIResponse:
        """Describes the calling key. Any valid key."""
        now = self._clock.now()
        with self._authorized(context, None, "WhoAmI", now) as (conn, principal):
            key = api_keys.get_api_key(conn, principal.key_id)
        return control_plane_pb2.WhoAmIResponse(key=convert.api_key_pb(key, now))

    @override
    def ListApiKeys(
        self, request: control_plane_pb2.ListApiKeysRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListApiKeysResponse:
        """Lists the tenant's keys, revoked ones included, newest first. Scope: admin."""
        now = self._clock.now()
        with self._authorized(context, Scope.ADMIN, "ListApiKeys", now) as (conn, principal):
            limit = convert.parse_page_size(request.page_size, default=API_KEY_PAGE_DEFAULT, maximum=API_KEY_PAGE_MAX)
            after = tokens.decode_api_key_token(request.page_token, principal.tenant_id)
            page = api_keys.list_api_keys(conn, tenant_id=principal.tenant_id, limit=limit, after=after)
        next_token = (
            tokens.encode_api_key_token(principal.tenant_id, page.next_cursor) if page.next_cursor is not None else ""
        )
        return control_plane_pb2.ListApiKeysResponse(
            keys=[convert.api_key_pb(key, now) for key in page.keys], next_page_token=next_token
        )

    @override
    def RotateApiKey(
        self, request: control_plane_pb2.RotateApiKeyRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.RotateApiKeyResponse:
        """Replaces a key of the tenant with a new secret; the old one ends after the grace. Scope: admin."""
        now = self._clock.now()
        with self._authorized(context, Scope.ADMIN, "RotateApiKey", now) as (conn, principal):
            rotation = api_keys.rotate_api_key(
                conn,
                tenant_id=principal.tenant_id,
                key_id=request.key_id,
                grace=timedelta(seconds=request.grace_seconds),
                actor=principal.actor(current_request_id()),
                now=now,
            )
        return control_plane_pb2.RotateApiKeyResponse(
            key=convert.api_key_pb(rotation.key, now),
            secret=rotation.secret,
            previous=convert.api_key_pb(rotation.previous, now),
        )

    @override
    def RevokeApiKey(
        self, request: control_plane_pb2.RevokeApiKeyRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.RevokeApiKeyResponse:
        """Revokes a key of the tenant at once; idempotent. Scope: admin."""
        now = self._clock.now()
        with self._authorized(context, Scope.ADMIN, "RevokeApiKey", now) as (conn, principal):
            key = api_keys.revoke_api_key(
                conn,
                tenant_id=principal.tenant_id,
                key_id=request.key_id,
                actor=principal.actor(current_request_id()),
                now=now,
            )
        return control_plane_pb2.RevokeApiKeyResponse(key=convert.api_key_pb(key, now))

    # --- credits ----------------------------------------------------------------------------

    @override
    def GrantCredits(
        self, request: control_plane_pb2.GrantCreditsRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GrantCreditsResponse:
        """Adds credits to an account. Scope: admin."""
        with self._authorized(context, Scope.ADMIN, "GrantCredits") as (conn, principal):
            balance = credits.grant_credits(
                conn,
                tenant_id=principal.tenant_id,
                account_id=convert.parse_uuid("account_id", request.account_id),
                amount=request.amount,
                reason=request.reason,
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.GrantCreditsResponse(balance=convert.balance_pb(balance))

    @override
    def GetBalance(
        self, request: control_plane_pb2.GetBalanceRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetBalanceResponse:
        """Returns an account's balance. Scope: read."""
        with self._authorized(context, Scope.READ, "GetBalance") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            balance = credits.get_balance(conn, tenant_id=principal.tenant_id, account_id=account_id)
        return control_plane_pb2.GetBalanceResponse(balance=convert.balance_pb(balance))

    @override
    def ListLedger(
        self, request: control_plane_pb2.ListLedgerRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListLedgerResponse:
        """Lists an account's ledger, newest first. Scope: read."""
        with self._authorized(context, Scope.READ, "ListLedger") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            page = credits.list_ledger(
                conn,
                tenant_id=principal.tenant_id,
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
        with self._authorized(context, Scope.GENERATE, "ReserveCredits") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            if self._account_limiter is not None:
                # Keyed by tenant too, so no other tenant's calls can drain this account's bucket.
                self._account_limiter.take((principal.tenant_id, account_id))
            if request.prompt:
                # Blocked prompts are recorded and refused before anything is held. The
                # account is checked first, so flags never name another tenant's account.
                accounts.get_account(conn, tenant_id=principal.tenant_id, account_id=account_id)
                profile = self._profile(conn, principal)
                moderation.screen_prompt(
                    conn,
                    self._checker(profile),
                    profile.moderation,
                    account_id=account_id,
                    prompt=request.prompt,
                    actor=principal.actor(current_request_id()),
                    now=self._clock.now(),
                )
            reserved = self._reserve(conn, principal, account_id, request)
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
        with self._authorized(context, Scope.GENERATE, "CommitReservation") as (conn, principal):
            reservation, balance = credits.commit_reservation(
                conn,
                tenant_id=principal.tenant_id,
                reservation_id=convert.parse_uuid("reservation_id", request.reservation_id),
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.CommitReservationResponse(
            reservation=convert.reservation_pb(reservation), balance=convert.balance_pb(balance)
        )

    @override
    def ReleaseReservation(
        self, request: control_plane_pb2.ReleaseReservationRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ReleaseReservationResponse:
        """Returns a held reservation's credits. Scope: generate."""
        with self._authorized(context, Scope.GENERATE, "ReleaseReservation") as (conn, principal):
            reservation, balance = credits.release_reservation(
                conn,
                tenant_id=principal.tenant_id,
                reservation_id=convert.parse_uuid("reservation_id", request.reservation_id),
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.ReleaseReservationResponse(
            reservation=convert.reservation_pb(reservation), balance=convert.balance_pb(balance)
        )

    # --- content ----------------------------------------------------------------------------

    @override
    def StoreContent(
        self, request: control_plane_pb2.StoreContentRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.StoreContentResponse:
        """Stores 1..16 items together, optionally committing their reservation. Scope: generate."""
        with self._authorized(context, Scope.GENERATE, "StoreContent") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            reservation_id = convert.parse_optional_uuid("commit_reservation_id", request.commit_reservation_id)
            items = _new_content(request.items)
            profile = self._profile(conn, principal)
            result = content.store_content(
                conn,
                self._blobs,
                self._keys,
                tenant_id=principal.tenant_id,
                account_id=account_id,
                items=items,
                commit_reservation_id=reservation_id,
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
                checker=self._checker(profile),
                moderation_policy=profile.moderation,
            )
        return control_plane_pb2.StoreContentResponse(
            contents=[convert.content_pb(item) for item in result.contents],
            reservation=convert.reservation_pb(result.reservation) if result.reservation else None,
            balance=convert.balance_pb(result.balance),
        )

    @override
    def GetContent(
        self, request: control_plane_pb2.GetContentRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetContentResponse:
        """Returns an item's metadata, and its bytes when asked. Scope: read."""
        with self._authorized(context, Scope.READ, "GetContent") as (conn, principal):
            item, data = content.get_content(
                conn,
                self._blobs,
                self._keys,
                tenant_id=principal.tenant_id,
                content_id=convert.parse_uuid("content_id", request.content_id),
                include_data=request.include_data,
                viewer_account_id=convert.parse_optional_uuid("viewer_account_id", request.viewer_account_id),
            )
        return control_plane_pb2.GetContentResponse(content=convert.content_pb(item), data=data or b"")

    @override
    def ListContent(
        self, request: control_plane_pb2.ListContentRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListContentResponse:
        """Lists an account's content, newest first. Scope: read."""
        with self._authorized(context, Scope.READ, "ListContent") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            page = content.list_content(
                conn,
                tenant_id=principal.tenant_id,
                account_id=account_id,
                limit=convert.parse_page_size(
                    request.page_size, default=CONTENT_PAGE_DEFAULT, maximum=CONTENT_PAGE_MAX
                ),
                after=tokens.decode_content_token(request.page_token, account_id),
                keys=self._keys,
                viewer_account_id=convert.parse_optional_uuid("viewer_account_id", request.viewer_account_id),
            )
        next_token = tokens.encode_content_token(account_id, page.next_cursor) if page.next_cursor else ""
        return control_plane_pb2.ListContentResponse(
            contents=[convert.content_pb(item) for item in page.items], next_page_token=next_token
        )

    # --- gallery ----------------------------------------------------------------------------

    @override
    def SetVisibility(
        self, request: control_plane_pb2.SetVisibilityRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.SetVisibilityResponse:
        """Sets one item's visibility, or all of an account's. Scope: privacy."""
        with self._authorized(context, Scope.PRIVACY, "SetVisibility") as (conn, principal):
            visibility = convert.parse_enum(
                "visibility", request.visibility, common_pb2.Visibility, convert.VISIBILITY_FROM_PB
            )
            if bool(request.content_id) == bool(request.account_id):
                raise InvalidArgument("content_id", "set exactly one of content_id (one item) and account_id (all)")
            actor = principal.actor(current_request_id())
            if request.content_id:
                if request.apply_to_default:
                    raise InvalidArgument("apply_to_default", "only applies with account_id")
                updated, item = content.set_item_visibility(
                    conn,
                    self._keys,
                    tenant_id=principal.tenant_id,
                    content_id=convert.parse_uuid("content_id", request.content_id),
                    visibility=visibility,
                    actor=actor,
                    now=self._clock.now(),
                )
                return control_plane_pb2.SetVisibilityResponse(updated_count=updated, content=convert.content_pb(item))
            updated = content.set_account_visibility(
                conn,
                tenant_id=principal.tenant_id,
                account_id=convert.parse_uuid("account_id", request.account_id),
                visibility=visibility,
                apply_to_default=request.apply_to_default,
                actor=actor,
                now=self._clock.now(),
            )
        return control_plane_pb2.SetVisibilityResponse(updated_count=updated)

    @override
    def ListPublicGallery(
        self, request: control_plane_pb2.ListPublicGalleryRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListPublicGalleryResponse:
        """Lists the tenant's public gallery, newest first. Scope: read."""
        with self._authorized(context, Scope.READ, "ListPublicGallery") as (conn, principal):
            page = content.list_public_gallery(
                conn,
                tenant_id=principal.tenant_id,
                limit=convert.parse_page_size(
                    request.page_size, default=CONTENT_PAGE_DEFAULT, maximum=CONTENT_PAGE_MAX
                ),
                after=tokens.decode_gallery_token(request.page_token, principal.tenant_id),
            )
        next_token = tokens.encode_gallery_token(principal.tenant_id, page.next_cursor) if page.next_cursor else ""
        return control_plane_pb2.ListPublicGalleryResponse(
            contents=[convert.content_pb(item) for item in page.items], next_page_token=next_token
        )

    # --- consent ----------------------------------------------------------------------------

    @override
    def RecordConsent(
        self, request: control_plane_pb2.RecordConsentRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.RecordConsentResponse:
        """Appends a consent grant or withdrawal. Scope: privacy."""
        with self._authorized(context, Scope.PRIVACY, "RecordConsent") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            purpose = convert.parse_enum(
                "purpose", request.purpose, control_plane_pb2.ConsentPurpose, convert.CONSENT_PURPOSE_FROM_PB
            )
            method = convert.parse_enum(
                "method", request.method, control_plane_pb2.ConsentMethod, convert.CONSENT_METHOD_FROM_PB
            )
            profile = self._profile(conn, principal)
            record = consent.record_consent(
                conn,
                tenant_id=principal.tenant_id,
                account_id=account_id,
                purpose=purpose,
                granted=request.granted,
                method=method,
                source=request.source,
                policy_version=request.policy_version or profile.policy_version,
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.RecordConsentResponse(record=convert.consent_record_pb(record))

    @override
    def GetConsents(
        self, request: control_plane_pb2.GetConsentsRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetConsentsResponse:
        """Returns the current state of every consent purpose. Scope: privacy."""
        with self._authorized(context, Scope.PRIVACY, "GetConsents") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            overview = consent.current_consents(
                conn, tenant_id=principal.tenant_id, account_id=account_id, profile=self._profile(conn, principal)
            )
        return convert.consent_overview_pb(overview)

    @override
    def ListConsentHistory(
        self, request: control_plane_pb2.ListConsentHistoryRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListConsentHistoryResponse:
        """Returns every consent record of an account, oldest first. Scope: privacy."""
        with self._authorized(context, Scope.PRIVACY, "ListConsentHistory") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            purpose = (
                convert.parse_enum(
                    "purpose", request.purpose, control_plane_pb2.ConsentPurpose, convert.CONSENT_PURPOSE_FROM_PB
                )
                if request.purpose
                else None
            )
            records = consent.consent_history(
                conn, tenant_id=principal.tenant_id, account_id=account_id, purpose=purpose
            )
        return control_plane_pb2.ListConsentHistoryResponse(records=[convert.consent_record_pb(r) for r in records])

    # --- data-subject requests --------------------------------------------------------------

    @override
    def RequestExport(
        self, request: control_plane_pb2.RequestExportRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.RequestExportResponse:
        """Records and answers an export request. Scope: privacy."""
        with self._authorized(context, Scope.PRIVACY, "RequestExport") as (conn, principal):
            answered = dsr.request_export(
                conn,
                self._blobs,
                self._keys,
                tenant_id=principal.tenant_id,
                account_id=convert.parse_uuid("account_id", request.account_id),
                profile=self._profile(conn, principal),
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.RequestExportResponse(request=convert.dsr_request_pb(answered))

    @override
    def GetExportArchive(
        self, request: control_plane_pb2.GetExportArchiveRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetExportArchiveResponse:
        """Returns a completed export's ZIP archive. Scope: privacy."""
        with self._authorized(context, Scope.PRIVACY, "GetExportArchive") as (conn, principal):
            archive = dsr.get_export_archive(
                conn,
                self._blobs,
                self._keys,
                tenant_id=principal.tenant_id,
                dsr_id=convert.parse_uuid("dsr_id", request.dsr_id),
            )
        return control_plane_pb2.GetExportArchiveResponse(archive=archive, media_type=dsr.ARCHIVE_MEDIA_TYPE)

    @override
    def RequestErasure(
        self, request: control_plane_pb2.RequestErasureRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.RequestErasureResponse:
        """Records and carries out an erasure of one item or a whole account. Scope: privacy."""
        with self._authorized(context, Scope.PRIVACY, "RequestErasure") as (conn, principal):
            answered = dsr.request_erasure(
                conn,
                self._blobs,
                self._keys,
                tenant_id=principal.tenant_id,
                account_id=convert.parse_uuid("account_id", request.account_id),
                content_id=convert.parse_optional_uuid("content_id", request.content_id),
                profile=self._profile(conn, principal),
                actor=principal.actor(current_request_id()),
                now=self._clock.now(),
            )
        return control_plane_pb2.RequestErasureResponse(request=convert.dsr_request_pb(answered))

    @override
    def ListDsrRequests(
        self, request: control_plane_pb2.ListDsrRequestsRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListDsrRequestsResponse:
        """Lists the tenant's data-subject requests, earliest due first. Scope: privacy."""
        with self._authorized(context, Scope.PRIVACY, "ListDsrRequests") as (conn, principal):
            as_of = convert.parse_timestamp("as_of", request.as_of) if request.HasField("as_of") else self._clock.now()
            requests = dsr.list_requests(
                conn,
                tenant_id=principal.tenant_id,
                account_id=convert.parse_optional_uuid("account_id", request.account_id),
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
        with self._authorized(context, Scope.PRIVACY, "ListAuditEntries") as (conn, principal):
            account_id = convert.parse_uuid("account_id", request.account_id)
            limit = convert.parse_page_size(request.page_size, default=AUDIT_PAGE_DEFAULT, maximum=AUDIT_PAGE_MAX)
            before = tokens.decode_audit_token(request.page_token, account_id)
            accounts.get_account(conn, tenant_id=principal.tenant_id, account_id=account_id)
            entries = audit.list_account_audit(conn, account_id, limit=limit + 1, before_id=before)
        next_token = tokens.encode_audit_token(account_id, entries[limit - 1].id) if len(entries) > limit else ""
        return control_plane_pb2.ListAuditEntriesResponse(
            entries=[convert.audit_entry_pb(e) for e in entries[:limit]], next_page_token=next_token
        )

    @override
    def RotateMasterKey(
        self, request: control_plane_pb2.RotateMasterKeyRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.RotateMasterKeyResponse:
        """Re-wraps every live data key under a new master key. Scope: admin, of the operator's tenant."""
        with self._authorized(context, Scope.ADMIN, "RotateMasterKey") as (conn, principal):
            # Every tenant's data keys are re-wrapped: a deployment-wide act, not one tenant's.
            if not tenants.is_operator_tenant(conn, principal.tenant_id):
                raise PermissionDenied(
                    "only the deployment operator's tenant may rotate the master key "
                    "(use the operator key, as `atelier keys rotate-master` does)"
                )
            result = self._keys.rotate_master(conn, actor=principal.actor(current_request_id()), now=self._clock.now())
        return control_plane_pb2.RotateMasterKeyResponse(
            previous_key_id=result.previous_key_id, key_id=result.key_id, rewrapped_keys=result.rewrapped_keys
        )

    # --- helpers ----------------------------------------------------------------------------

    @contextmanager
    def _authorized(
        self, context: grpc.ServicerContext, scope: Scope | None, method: str, now: datetime | None = None
    ) -> Iterator[tuple[Connection, Principal]]:
        """Borrows a connection, authenticates the caller on it and checks `scope`.

        Authentication comes before any field is parsed: an unauthenticated caller learns
        nothing about its request, not even that a field is malformed. Keys are judged at
        `now` (the server clock's time when None), so a rotation's grace period follows it.
        """
        instant = now if now is not None else self._clock.now()
        with authorized(self._pool, context, scope, method, now=instant) as (conn, principal):
            yield conn, principal

    def _reserve(
        self,
        conn: Connection,
        principal: Principal,
        account_id: UUID,
        request: control_plane_pb2.ReserveCreditsRequest,
    ) -> credits.Reserved:
        ttl = self._reservation_ttl(request.ttl_seconds)
        actor = principal.actor(current_request_id())
        if not request.HasField("idempotency"):
            reservation, balance = credits.reserve_credits(
                conn,
                tenant_id=principal.tenant_id,
                account_id=account_id,
                amount=request.amount,
                ttl=ttl,
                purpose=request.purpose,
                actor=actor,
                now=self._clock.now(),
                concurrency=self._concurrency,
            )
            return credits.Reserved(reservation, balance, None)
        if len(request.idempotency.request_fingerprint) > MAX_CALLER_FINGERPRINT_BYTES:
            raise InvalidArgument("idempotency.request_fingerprint", f"must be 0..{MAX_CALLER_FINGERPRINT_BYTES} bytes")
        return credits.reserve_credits_idempotently(
            conn,
            tenant_id=principal.tenant_id,
            account_id=account_id,
            amount=request.amount,
            ttl=ttl,
            purpose=request.purpose,
            actor=actor,
            now=self._clock.now(),
            idempotency=credits.IdempotencyKey(request.idempotency.key, _request_fingerprint(request)),
            concurrency=self._concurrency,
        )

    def _profile(self, conn: Connection, principal: Principal) -> PolicyProfile:
        return self._policies.for_tenant(conn, principal.tenant_id)

    def _checker(self, profile: PolicyProfile) -> moderation.ModerationChecker:
        checker = self._checkers.get(profile.name)
        return checker if checker is not None else self._checkers["default"]

    def _reservation_ttl(self, ttl_seconds: int) -> timedelta:
        if ttl_seconds == 0:
            return timedelta(seconds=self._config.reservation_ttl_s)
        if ttl_seconds > self._config.max_reservation_ttl_s:
            raise InvalidArgument(
                "ttl_seconds",
                f"must be 0..{self._config.max_reservation_ttl_s} (0 means {self._config.reservation_ttl_s})",
            )
        return timedelta(seconds=ttl_seconds)


def _request_fingerprint(request: control_plane_pb2.ReserveCreditsRequest) -> bytes:
    # Everything that shapes the reservation's result, each part length-prefixed so no two
    # different requests can concatenate to the same bytes.
    digest = hashlib.sha256()
    parts = (
        request.idempotency.request_fingerprint,
        str(request.amount).encode(),
        request.purpose.encode(),
        request.prompt.encode(),
    )
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _new_content(items: Sequence[control_plane_pb2.NewContent]) -> list[content.NewContent]:
    return [
        content.NewContent(
            kind=convert.parse_enum(
                f"items[{i}].kind", item.kind, control_plane_pb2.ContentKind, convert.CONTENT_KIND_FROM_PB
            ),
            media_type=item.media_type,
            data=item.data,
            prompt=item.prompt,
            parameters=convert.parameters_to_dict(item.parameters),
            visibility=(
                convert.parse_enum(
                    f"items[{i}].visibility", item.visibility, common_pb2.Visibility, convert.VISIBILITY_FROM_PB
                )
                if item.visibility
                else None
            ),
        )
        for i, item in enumerate(items)
    ]
