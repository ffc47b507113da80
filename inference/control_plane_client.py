"""The gateway's client of the control plane: reserve, store-and-commit, release.

Calls carry the end caller's credentials (API key, and the acting end user's account and ID
token when the caller sent them), so the control plane authorises every step against the
caller's own tenant, scopes and acting account; the gateway holds no privileges of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc

from inference.deadline import remaining_s
from inference.errors import STATUS_DETAILS_KEY, RequestError
from inference.generation import OutputVerdict
from protos.atelier.v1 import common_pb2, control_plane_pb2, control_plane_pb2_grpc
from transport.call_metadata import CallerCredentials
from transport.tls import TlsConfig

logger = logging.getLogger(__name__)

# Codes whose meaning is the caller's to act on; anything else is our failure.
_CALLER_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        # An idempotent retry whose first request is still in flight (with a RetryInfo).
        grpc.StatusCode.ABORTED,
    }
)
_RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
CONTROL_PLANE_UNAVAILABLE = "CONTROL_PLANE_UNAVAILABLE"
"""ErrorInfo reason of a request refused because the control plane did not answer (in time)."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest message sent to or accepted from the control plane: its own server default
(`ControlPlaneConfig.max_message_bytes`); a store of 8 large PNGs stays far below it."""


class ControlPlaneClient:
    """Async client bound to the event loop of the replica that first uses it."""

    def __init__(
        self, address: str, timeout_s: float, tls: TlsConfig | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES
    ) -> None:
        """Dials `address` as `tls` says; None reads `ATELIER_TLS_*` when the channel is made.

        The default reads the replica process's own environment (where the chart mounts the
        certificates), not the driver's that built the deployment.
        """
        self._address = address
        self._max_message_bytes = max_message_bytes
        self._timeout_s = timeout_s
        self._tls = tls
        self._stub: control_plane_pb2_grpc.ControlPlaneStub | None = None

    def _control_plane(self) -> control_plane_pb2_grpc.ControlPlaneStub:
        # grpc.aio channels belong to the loop they are created on: create it lazily on the
        # replica's request loop, not in the deployment's constructor.
        if self._stub is None:
            tls = self._tls if self._tls is not None else TlsConfig.from_env()
            options = [
                ("grpc.max_send_message_length", self._max_message_bytes),
                ("grpc.max_receive_message_length", self._max_message_bytes),
            ]
            self._stub = control_plane_pb2_grpc.ControlPlaneStub(tls.aio_channel(self._address, options))
        return self._stub

    async def reserve_credits(
        self,
        caller: CallerCredentials,
        account_id: str,
        amount: int,
        ttl_s: int,
        purpose: str,
        prompt: str = "",
        idempotency: control_plane_pb2.IdempotencyKey | None = None,
        deadline: float | None = None,
    ) -> control_plane_pb2.ReserveCreditsResponse:
        """Holds `amount` credits of the account; the reply names the reservation.

        The control plane moderates `prompt` first: a blocked prompt reserves nothing. With
        `idempotency`, a retry of a committed request holds nothing: the reply says
        `replayed` and lists the content ids the first request stored.

        Raises:
            RequestError: the control plane refused (its code, message and rich details) or
                is unreachable.
        """
        request = control_plane_pb2.ReserveCreditsRequest(
            account_id=account_id,
            amount=amount,
            ttl_seconds=ttl_s,
            purpose=purpose,
            prompt=prompt,
            idempotency=idempotency,
        )
        response: control_plane_pb2.ReserveCreditsResponse = await self._call(
            self._control_plane().ReserveCredits, request, caller, deadline
        )
        return response

    async def get_content(
        self, caller: CallerCredentials, content_id: str, deadline: float | None = None
    ) -> control_plane_pb2.GetContentResponse:
        """An item's metadata and bytes (decrypted by the control plane).

        Raises:
            RequestError: the control plane refused or is unreachable.
        """
        request = control_plane_pb2.GetContentRequest(content_id=content_id, include_data=True)
        response: control_plane_pb2.GetContentResponse = await self._call(
            self._control_plane().GetContent, request, caller, deadline
        )
        return response

    async def store_and_commit(
        self,
        caller: CallerCredentials,
        account_id: str,
        reservation_id: str,
        images: list[bytes],
        prompt: str,
        parameters: list[common_pb2.GenerationParameters],
        visibility: common_pb2.Visibility.ValueType,
        verdicts: Sequence[OutputVerdict] = (),
        *,
        watermark: bool = True,
        model_version: str = "",
        deadline: float | None = None,
    ) -> control_plane_pb2.StoreContentResponse:
        """Stores the PNGs with the output classifier's verdict on each, and commits the reservation, in one
        control-plane transaction.

        The control plane watermarks and signs generated images as it stores them; the response's
        `stored_data` holds the marked files (return those, not `images`).

        Raises:
            RequestError: the control plane refused or is unreachable; nothing was stored or charged. A verdict
                over its threshold under a withholding policy is FAILED_PRECONDITION `OUTPUT_BLOCKED`, and the
                control plane has then released the reservation itself.
        """
        judged: list[OutputVerdict | None] = list(verdicts) or [None] * len(images)
        items = [
            control_plane_pb2.NewContent(
                kind=control_plane_pb2.CONTENT_KIND_GENERATED,
                media_type="image/png",
                data=png,
                prompt=prompt,
                parameters=params,
                visibility=visibility,
                output_verdict=_verdict_pb(verdict),
                output_classifier=verdict.classifier if verdict is not None else "",
                skip_watermark=not watermark,
                model_version=model_version,
            )
            for png, params, verdict in zip(images, parameters, judged, strict=True)
        ]
        request = control_plane_pb2.StoreContentRequest(
            account_id=account_id, items=items, commit_reservation_id=reservation_id
        )
        return await self._call(self._control_plane().StoreContent, request, caller, deadline)

    async def store_upload(
        self, caller: CallerCredentials, account_id: str, png: bytes, deadline: float | None = None
    ) -> str:
        """Stores an init image for editing as a private upload of the account; returns its content id.

        Uploads cost nothing and are deleted by the retention sweep after the upload lifetime.

        Raises:
            RequestError: the control plane refused or is unreachable; nothing was stored.
        """
        item = control_plane_pb2.NewContent(
            kind=control_plane_pb2.CONTENT_KIND_UPLOAD,
            media_type="image/png",
            data=png,
            visibility=common_pb2.VISIBILITY_PRIVATE,
        )
        request = control_plane_pb2.StoreContentRequest(account_id=account_id, items=[item])
        response = await self._call(self._control_plane().StoreContent, request, caller, deadline)
        return str(response.contents[0].content_id)

    async def release_reservation(self, caller: CallerCredentials, reservation_id: str) -> None:
        """Returns held credits; failures are logged, since the reservation also expires on its own.

        Not bounded by the caller's deadline: a release often runs because that deadline passed.
        """
        request = control_plane_pb2.ReleaseReservationRequest(reservation_id=reservation_id)
        try:
            await self._call(self._control_plane().ReleaseReservation, request, caller)
        except RequestError as exc:
            logger.warning("release_failed reservation_id=%s code=%s", reservation_id, exc.code.name)

    async def _call(self, method, request, caller: CallerCredentials, deadline: float | None = None):  # type: ignore[no-untyped-def]
        """Calls `method` within the configured timeout and the caller's `deadline` (epoch seconds),
        whichever ends first; past the caller's deadline nothing is sent."""
        timeout_s = self._timeout_s
        left = remaining_s(deadline, time.time())
        bounded_by_caller = left is not None and left < timeout_s
        if bounded_by_caller:
            if left <= 0:  # type: ignore[operator]
                raise _caller_deadline_exceeded()
            timeout_s = left  # type: ignore[assignment]
        try:
            # The caller's own key and acting end user: the control plane authorises the caller.
            return await method(request, metadata=caller.metadata(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if bounded_by_caller and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise _caller_deadline_exceeded() from None
            raise _to_request_error(exc) from None


def _verdict_pb(verdict: OutputVerdict | None) -> control_plane_pb2.OutputVerdict | None:
    if verdict is None:
        return None
    return control_plane_pb2.OutputVerdict(category=verdict.category, score=verdict.score, threshold=verdict.threshold)


def _caller_deadline_exceeded() -> RequestError:
    """The caller's deadline passed while the gateway worked on its request (nothing was charged)."""
    return RequestError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "the request's deadline passed before it completed; nothing was charged: allow more time or retry",
    )


def _to_request_error(exc: grpc.aio.AioRpcError) -> RequestError:
    code = exc.code()
    details = next((value for key, value in exc.trailing_metadata() or () if key == STATUS_DETAILS_KEY), None)
    if code in _CALLER_CODES or (code == grpc.StatusCode.UNAVAILABLE and isinstance(details, bytes)):
        # The control plane's own refusal (an UNAVAILABLE with details is its DATABASE_UNAVAILABLE).
        return RequestError(code, exc.details() or code.name, details if isinstance(details, bytes) else None)
    logger.warning("control_plane_call_failed code=%s", code.name)
    if code in _RETRYABLE_CODES:
        return RequestError.retry_later(
            grpc.StatusCode.UNAVAILABLE,
            "the accounts service is unavailable right now; nothing was charged, retry with backoff",
            CONTROL_PLANE_UNAVAILABLE,
            retry_after_s=1,
        )
    return RequestError(grpc.StatusCode.INTERNAL, "control plane error")
