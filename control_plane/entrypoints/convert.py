"""Conversions between protobuf messages and domain values, and request-field parsing.

Parsing raises `InvalidArgument` naming the request field, so the servicer stays a list of
"parse, call, build" steps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

from google.protobuf.timestamp_pb2 import Timestamp

from control_plane.accounts import Account, AccountStatus, Tier, Visibility
from control_plane.api_keys import ApiKey, Scope
from control_plane.audit import AuditRecord
from control_plane.config import ConfigError
from control_plane.consent import ConsentOverview, ConsentRecord, Method, Purpose
from control_plane.content import ContentItem, ContentKind
from control_plane.credits import Balance, LedgerEntry, Reservation, ReservationState
from control_plane.dsr import DsrKind, DsrRequest, DsrState
from control_plane.errors import InvalidArgument
from control_plane.output_scan import ClassifierVerdict
from control_plane.policy import TrainingConsentMode
from control_plane.user_tokens import IdentityProvider
from protos.atelier.v1 import common_pb2, control_plane_pb2

_E = TypeVar("_E")

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

TIER_FROM_PB = {control_plane_pb2.TIER_FREE: Tier.FREE, control_plane_pb2.TIER_PREMIUM: Tier.PREMIUM}
TIER_TO_PB = {tier: number for number, tier in TIER_FROM_PB.items()}
ACCOUNT_STATUS_TO_PB = {
    AccountStatus.ACTIVE: control_plane_pb2.ACCOUNT_STATUS_ACTIVE,
    AccountStatus.SUSPENDED: control_plane_pb2.ACCOUNT_STATUS_SUSPENDED,
    AccountStatus.ERASED: control_plane_pb2.ACCOUNT_STATUS_ERASED,
}
VISIBILITY_FROM_PB = {
    common_pb2.VISIBILITY_PRIVATE: Visibility.PRIVATE,
    common_pb2.VISIBILITY_PUBLIC: Visibility.PUBLIC,
}
VISIBILITY_TO_PB = {visibility: number for number, visibility in VISIBILITY_FROM_PB.items()}
SCOPE_FROM_PB = {
    control_plane_pb2.SCOPE_GENERATE: Scope.GENERATE,
    control_plane_pb2.SCOPE_READ: Scope.READ,
    control_plane_pb2.SCOPE_PRIVACY: Scope.PRIVACY,
    control_plane_pb2.SCOPE_ADMIN: Scope.ADMIN,
    control_plane_pb2.SCOPE_ACT_FOR_ANY: Scope.ACT_FOR_ANY,
}
SCOPE_TO_PB = {scope: number for number, scope in SCOPE_FROM_PB.items()}
RESERVATION_STATE_TO_PB = {
    ReservationState.HELD: control_plane_pb2.RESERVATION_STATE_HELD,
    ReservationState.COMMITTED: control_plane_pb2.RESERVATION_STATE_COMMITTED,
    ReservationState.RELEASED: control_plane_pb2.RESERVATION_STATE_RELEASED,
    ReservationState.EXPIRED: control_plane_pb2.RESERVATION_STATE_EXPIRED,
}
CONTENT_KIND_FROM_PB = {
    control_plane_pb2.CONTENT_KIND_GENERATED: ContentKind.GENERATED,
    control_plane_pb2.CONTENT_KIND_UPLOAD: ContentKind.UPLOAD,
}
CONTENT_KIND_TO_PB = {kind: number for number, kind in CONTENT_KIND_FROM_PB.items()}
CONSENT_PURPOSE_FROM_PB = {
    control_plane_pb2.CONSENT_PURPOSE_TRAINING: Purpose.TRAINING,
    control_plane_pb2.CONSENT_PURPOSE_ANALYTICS: Purpose.ANALYTICS,
    control_plane_pb2.CONSENT_PURPOSE_MARKETING: Purpose.MARKETING,
    control_plane_pb2.CONSENT_PURPOSE_PROCESSING: Purpose.PROCESSING,
}
CONSENT_PURPOSE_TO_PB = {purpose: number for number, purpose in CONSENT_PURPOSE_FROM_PB.items()}
CONSENT_METHOD_FROM_PB = {
    control_plane_pb2.CONSENT_METHOD_SETTINGS: Method.SETTINGS,
    control_plane_pb2.CONSENT_METHOD_API: Method.API,
    control_plane_pb2.CONSENT_METHOD_GUARDIAN: Method.GUARDIAN,
}
CONSENT_METHOD_TO_PB = {method: number for number, method in CONSENT_METHOD_FROM_PB.items()}
TRAINING_MODE_TO_PB = {
    TrainingConsentMode.OPT_IN: control_plane_pb2.TRAINING_CONSENT_MODE_OPT_IN,
    TrainingConsentMode.OPT_OUT: control_plane_pb2.TRAINING_CONSENT_MODE_OPT_OUT,
}
DSR_KIND_TO_PB = {
    DsrKind.EXPORT: control_plane_pb2.DSR_KIND_EXPORT,
    DsrKind.ERASURE: control_plane_pb2.DSR_KIND_ERASURE,
}
DSR_STATE_TO_PB = {
    DsrState.RECEIVED: control_plane_pb2.DSR_STATE_RECEIVED,
    DsrState.IN_PROGRESS: control_plane_pb2.DSR_STATE_IN_PROGRESS,
    DsrState.COMPLETED: control_plane_pb2.DSR_STATE_COMPLETED,
    DsrState.REJECTED: control_plane_pb2.DSR_STATE_REJECTED,
}


# --- request fields -> domain values --------------------------------------------------------


def parse_uuid(field: str, value: str) -> UUID:
    """Parses a required UUID field."""
    if not value:
        raise InvalidArgument(field, "is required (a UUID)")
    # UUID() also accepts braces and urn: forms; the length bound keeps junk out of logs.
    if len(value) > 45:
        raise InvalidArgument(field, "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000")
    try:
        return UUID(value)
    except ValueError:
        raise InvalidArgument(field, "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000") from None


def parse_optional_uuid(field: str, value: str) -> UUID | None:
    """Parses a UUID field where empty means unset."""
    return parse_uuid(field, value) if value else None


def parse_birth_date(value: str) -> date | None:
    """Parses `birth_date` (YYYY-MM-DD); empty means not given."""
    if not value:
        return None
    if not _ISO_DATE.match(value):
        raise InvalidArgument("birth_date", "must be a date as YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument("birth_date", "is not a real calendar date (YYYY-MM-DD)") from None


class _ProtoEnum(Protocol):
    # Any: each generated enum's Name() takes its own int NewType.
    def Name(self, number: Any) -> str: ...  # noqa: N802 (protobuf's name)


def parse_timestamp(field: str, value: Timestamp) -> datetime:
    """Parses a Timestamp field into an aware UTC datetime.

    Raises:
        InvalidArgument: Outside 0001-01-01..9999-12-31 or nanos outside 0..999999999 (what
            `Timestamp` allows; the conversion would otherwise fail as an internal error).
    """
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "must be a valid timestamp between 0001-01-01 and 9999-12-31 UTC") from None


def parse_enum(
    field: str, value: int, enum_type: _ProtoEnum, mapping: Mapping[Any, _E], default: _E | None = None
) -> _E:
    """Maps a protobuf enum number to its domain value.

    Args:
        field: Request field, for the error.
        value: The number received (proto3 enums accept numbers the schema does not name).
        enum_type: The protobuf enum, for the valid names in the error.
        mapping: Accepted numbers and their domain values.
        default: Used for the zero `..._UNSPECIFIED` value; None makes that value invalid.
    """
    if value == 0 and default is not None:
        return default
    try:
        return mapping[value]
    except KeyError:
        names = ", ".join(enum_type.Name(number) for number in mapping)
        raise InvalidArgument(field, f"must be one of {names}") from None


def parse_page_size(value: int, *, default: int, maximum: int) -> int:
    """Applies a page size's default (for 0) and range."""
    if value == 0:
        return default
    if value > maximum:
        raise InvalidArgument("page_size", f"must be 0..{maximum} (0 means {default})")
    return value


def parameters_to_dict(parameters: common_pb2.GenerationParameters) -> dict[str, Any]:
    """The parameters that are set, as JSON-ready values keyed by proto field name.

    Enum fields are stored by value name ("GENERATION_MODE_INPAINT"), not number, so the stored
    rows (and DSR exports of them) read without the proto at hand.
    """
    return {
        descriptor.name: descriptor.enum_type.values_by_number[value].name
        if descriptor.enum_type is not None and value in descriptor.enum_type.values_by_number
        else value
        for descriptor, value in parameters.ListFields()
    }


def parameters_from_dict(values: Mapping[str, Any]) -> common_pb2.GenerationParameters:
    """Rebuilds stored parameters, ignoring keys this version of the proto does not know.

    Enum values may be names (as stored now) or numbers (rows stored before names were).
    """
    known = common_pb2.GenerationParameters.DESCRIPTOR.fields_by_name
    return common_pb2.GenerationParameters(**{k: v for k, v in values.items() if k in known})


# --- domain values -> messages --------------------------------------------------------------


def timestamp(instant: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp, or None (field left unset) for None."""
    if instant is None:
        return None
    message = Timestamp()
    message.FromDatetime(instant)
    return message


def account_pb(account: Account) -> control_plane_pb2.Account:
    """The wire form of an account."""
    return control_plane_pb2.Account(
        account_id=str(account.account_id),
        tenant_id=str(account.tenant_id),
        tier=TIER_TO_PB[account.tier],
        status=ACCOUNT_STATUS_TO_PB[account.status],
        default_visibility=VISIBILITY_TO_PB[account.default_visibility],
        created_at=timestamp(account.created_at),
        last_active_at=timestamp(account.last_active_at),
    )


def balance_pb(balance: Balance) -> control_plane_pb2.Balance:
    """The wire form of a balance."""
    return control_plane_pb2.Balance(
        account_id=str(balance.account_id), total=balance.total, held=balance.held, available=balance.available
    )


def reservation_pb(reservation: Reservation) -> control_plane_pb2.Reservation:
    """The wire form of a reservation."""
    return control_plane_pb2.Reservation(
        reservation_id=str(reservation.reservation_id),
        account_id=str(reservation.account_id),
        amount=reservation.amount,
        state=RESERVATION_STATE_TO_PB[reservation.state],
        expires_at=timestamp(reservation.expires_at),
    )


def ledger_entry_pb(entry: LedgerEntry) -> control_plane_pb2.LedgerEntry:
    """The wire form of a ledger entry."""
    return control_plane_pb2.LedgerEntry(
        entry_id=entry.entry_id,
        delta=entry.delta,
        kind=entry.kind,
        reservation_id=str(entry.reservation_id) if entry.reservation_id else "",
        reason=entry.reason,
        created_at=timestamp(entry.created_at),
    )


def api_key_pb(key: ApiKey, now: datetime) -> control_plane_pb2.ApiKey:
    """The wire form of an API key (never its secret); `active` is judged at `now`."""
    return control_plane_pb2.ApiKey(
        key_id=key.key_id,
        tenant_id=str(key.tenant_id),
        name=key.name,
        scopes=[SCOPE_TO_PB[scope] for scope in key.scopes],
        created_at=timestamp(key.created_at),
        revoked_at=timestamp(key.revoked_at),
        replaced_by_key_id=key.replaced_by or "",
        active=key.is_active(now),
    )


def content_pb(item: ContentItem) -> control_plane_pb2.Content:
    """The wire form of a content item's metadata."""
    return control_plane_pb2.Content(
        content_id=str(item.content_id),
        account_id=str(item.account_id),
        kind=CONTENT_KIND_TO_PB[item.kind],
        media_type=item.media_type,
        sha256=item.sha256,
        size_bytes=item.size_bytes,
        visibility=VISIBILITY_TO_PB[item.visibility],
        prompt=item.prompt,
        parameters=parameters_from_dict(item.parameters),
        created_at=timestamp(item.created_at),
        expires_at=timestamp(item.expires_at),
    )


def consent_record_pb(record: ConsentRecord) -> control_plane_pb2.ConsentRecord:
    """The wire form of a consent record."""
    return control_plane_pb2.ConsentRecord(
        consent_id=record.consent_id,
        account_id=str(record.account_id),
        purpose=CONSENT_PURPOSE_TO_PB[record.purpose],
        granted=record.granted,
        method=CONSENT_METHOD_TO_PB[record.method],
        source=record.source,
        policy_version=record.policy_version,
        recorded_at=timestamp(record.recorded_at),
        actor_key_id=record.actor_key_id or "",
    )


def consent_overview_pb(overview: ConsentOverview) -> control_plane_pb2.GetConsentsResponse:
    """The wire form of every purpose's current state."""
    return control_plane_pb2.GetConsentsResponse(
        consents=[
            control_plane_pb2.ConsentState(
                purpose=CONSENT_PURPOSE_TO_PB[state.purpose],
                granted=state.granted,
                explicit=state.explicit,
                recorded_at=timestamp(state.recorded_at),
            )
            for state in overview.states
        ],
        training_consent_mode=TRAINING_MODE_TO_PB[overview.training_consent_mode],
        guardian_consent_required=overview.guardian_consent_required,
        may_process=overview.may_process,
    )


def dsr_request_pb(request: DsrRequest) -> control_plane_pb2.DsrRequest:
    """The wire form of a data-subject request."""
    return control_plane_pb2.DsrRequest(
        dsr_id=str(request.dsr_id),
        account_id=str(request.account_id),
        kind=DSR_KIND_TO_PB[request.kind],
        state=DSR_STATE_TO_PB[request.state],
        received_at=timestamp(request.received_at),
        due_at=timestamp(request.due_at),
        completed_at=timestamp(request.completed_at),
        content_id=str(request.content_id) if request.content_id else "",
        archive_size_bytes=request.archive_size_bytes,
    )


def audit_entry_pb(entry: AuditRecord) -> control_plane_pb2.AuditEntry:
    """The wire form of an audit row."""
    return control_plane_pb2.AuditEntry(
        id=entry.id,
        at=timestamp(entry.at),
        actor_key_id=entry.actor_key_id or "",
        request_id=entry.request_id or "",
        action=entry.action,
        target_type=entry.target_type,
        target_id=entry.target_id,
        details_json=json.dumps(dict(entry.details), sort_keys=True, default=str),
        acting_account_id=str(entry.acting_account_id or ""),
    )


def output_verdict(item: control_plane_pb2.NewContent) -> ClassifierVerdict:
    """The image classifier's verdict a stored item carries (validated by `content.validate_new_content`)."""
    verdict = item.output_verdict
    return ClassifierVerdict(verdict.category, verdict.score, verdict.threshold, item.output_classifier)


_PROVIDER_FIELD_CHARS = {"issuer": 500, "audience": 500, "account_claim": 100, "jwks": 1024 * 1024}


def parse_identity_provider(provider: control_plane_pb2.IdentityProvider) -> IdentityProvider:
    """A tenant's OIDC provider from a request (`account_claim` empty means "sub").

    Raises:
        InvalidArgument: A field is empty or too long, or `jwks` is neither a key set nor an https/file URL
            (named `provider.<field>`).
    """
    claim = provider.account_claim or "sub"
    for name, limit in _PROVIDER_FIELD_CHARS.items():
        value = claim if name == "account_claim" else getattr(provider, name)
        if not 1 <= len(value) <= limit:
            raise InvalidArgument(f"provider.{name}", f"must be 1..{limit} characters")
    try:
        return IdentityProvider(provider.issuer, provider.audience, provider.jwks, claim, provider.require_user_token)
    except ConfigError as error:
        raise InvalidArgument(f"provider.{error.setting}", error.detail) from None


def identity_provider_pb(provider: IdentityProvider) -> control_plane_pb2.IdentityProvider:
    """The protobuf form of a tenant's OIDC provider."""
    return control_plane_pb2.IdentityProvider(
        issuer=provider.issuer,
        audience=provider.audience,
        jwks=provider.jwks,
        account_claim=provider.account_claim,
        require_user_token=provider.required,
    )
