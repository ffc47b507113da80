"""Content and the gallery: StoreContent, GetContent, ListContent, SetVisibility, SetDefaultVisibility,
ListPublicGallery."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from typing_extensions import override

from control_plane import accounts, content
from control_plane.api_keys import Scope
from control_plane.entrypoints import convert
from control_plane.entrypoints import page_tokens as tokens
from control_plane.entrypoints.servicers._base import ControlPlaneRpcs
from control_plane.errors import InvalidArgument
from protos.atelier.v1 import common_pb2, control_plane_pb2

CONTENT_PAGE_DEFAULT, CONTENT_PAGE_MAX = 20, 100


class ContentRpcs(ControlPlaneRpcs):
    """The content and gallery RPCs of control_plane.proto."""

    @override
    def StoreContent(
        self, request: control_plane_pb2.StoreContentRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.StoreContentResponse:
        """Stores 1..16 items together, optionally committing their reservation. Scope: generate."""
        with self._call(context, Scope.GENERATE, "StoreContent") as (conn, caller):
            account_id = caller.act_on(convert.parse_uuid("account_id", request.account_id))
            reservation_id = convert.parse_optional_uuid("commit_reservation_id", request.commit_reservation_id)
            items = _new_content(request.items)
            profile = self._profile(conn, caller)
            result = content.store_content(
                conn,
                self._blobs,
                self._keys,
                tenant_id=caller.tenant_id,
                account_id=account_id,
                items=items,
                commit_reservation_id=reservation_id,
                actor=caller.actor,
                now=caller.now,
                checker=self._checker(profile),
                moderation_policy=profile.moderation,
                marker=self._marker,
                blob_writer=self._blob_writer,
            )
        return control_plane_pb2.StoreContentResponse(
            contents=[convert.content_pb(item) for item in result.contents],
            reservation=convert.reservation_pb(result.reservation) if result.reservation else None,
            balance=convert.balance_pb(result.balance),
            stored_data=[data or b"" for data in result.marked] if any(result.marked) else [],
        )

    @override
    def GetContent(
        self, request: control_plane_pb2.GetContentRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetContentResponse:
        """Returns an item's metadata, and its bytes when asked. Scope: read."""
        with self._call(context, Scope.READ, "GetContent") as (conn, caller):
            item, data = content.get_content(
                conn,
                self._blobs,
                self._keys,
                tenant_id=caller.tenant_id,
                content_id=convert.parse_uuid("content_id", request.content_id),
                include_data=request.include_data,
                viewer_account_id=caller.own_account(
                    convert.parse_optional_uuid("viewer_account_id", request.viewer_account_id)
                ),
            )
        return control_plane_pb2.GetContentResponse(content=convert.content_pb(item), data=data or b"")

    @override
    def ListContent(
        self, request: control_plane_pb2.ListContentRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListContentResponse:
        """Lists an account's content, newest first. Scope: read."""
        with self._call(context, Scope.READ, "ListContent") as (conn, caller):
            account_id = convert.parse_uuid("account_id", request.account_id)
            page = content.list_content(
                conn,
                tenant_id=caller.tenant_id,
                account_id=account_id,
                limit=convert.parse_page_size(
                    request.page_size, default=CONTENT_PAGE_DEFAULT, maximum=CONTENT_PAGE_MAX
                ),
                after=tokens.decode_content_token(request.page_token, account_id),
                keys=self._keys,
                viewer_account_id=caller.own_account(
                    convert.parse_optional_uuid("viewer_account_id", request.viewer_account_id)
                ),
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
        with self._call(context, Scope.PRIVACY, "SetVisibility") as (conn, caller):
            visibility = convert.parse_enum(
                "visibility", request.visibility, common_pb2.Visibility, convert.VISIBILITY_FROM_PB
            )
            if bool(request.content_id) == bool(request.account_id):
                raise InvalidArgument("content_id", "set exactly one of content_id (one item) and account_id (all)")
            actor = caller.actor
            if request.content_id:
                if request.apply_to_default:
                    raise InvalidArgument("apply_to_default", "only applies with account_id")
                updated, item = content.set_item_visibility(
                    conn,
                    self._keys,
                    tenant_id=caller.tenant_id,
                    content_id=convert.parse_uuid("content_id", request.content_id),
                    visibility=visibility,
                    actor=actor,
                    now=caller.now,
                    account_id=caller.own_account(None),
                )
                return control_plane_pb2.SetVisibilityResponse(updated_count=updated, content=convert.content_pb(item))
            updated = content.set_account_visibility(
                conn,
                tenant_id=caller.tenant_id,
                account_id=caller.act_on(convert.parse_uuid("account_id", request.account_id)),
                visibility=visibility,
                apply_to_default=request.apply_to_default,
                actor=actor,
                now=caller.now,
            )
        return control_plane_pb2.SetVisibilityResponse(updated_count=updated)

    @override
    def SetDefaultVisibility(
        self, request: control_plane_pb2.SetDefaultVisibilityRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.SetDefaultVisibilityResponse:
        """Sets the visibility of an account's future content only. Scope: privacy."""
        with self._call(context, Scope.PRIVACY, "SetDefaultVisibility") as (conn, caller):
            account = accounts.set_default_visibility(
                conn,
                tenant_id=caller.tenant_id,
                account_id=caller.act_on(convert.parse_uuid("account_id", request.account_id)),
                visibility=convert.parse_enum(
                    "visibility", request.visibility, common_pb2.Visibility, convert.VISIBILITY_FROM_PB
                ),
                actor=caller.actor,
                now=caller.now,
            )
        return control_plane_pb2.SetDefaultVisibilityResponse(account=convert.account_pb(account))

    @override
    def ListPublicGallery(
        self, request: control_plane_pb2.ListPublicGalleryRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.ListPublicGalleryResponse:
        """Lists the tenant's public gallery, newest first. Scope: read."""
        with self._call(context, Scope.READ, "ListPublicGallery") as (conn, caller):
            page = content.list_public_gallery(
                conn,
                tenant_id=caller.tenant_id,
                limit=convert.parse_page_size(
                    request.page_size, default=CONTENT_PAGE_DEFAULT, maximum=CONTENT_PAGE_MAX
                ),
                after=tokens.decode_gallery_token(request.page_token, caller.tenant_id),
            )
        next_token = tokens.encode_gallery_token(caller.tenant_id, page.next_cursor) if page.next_cursor else ""
        return control_plane_pb2.ListPublicGalleryResponse(
            contents=[convert.content_pb(item) for item in page.items], next_page_token=next_token
        )

    # --- consent ----------------------------------------------------------------------------


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
            output_verdict=convert.output_verdict(item) if item.HasField("output_verdict") else None,
            watermark=not item.skip_watermark,
            model_version=_model_version(f"items[{i}].model_version", item.model_version),
        )
        for i, item in enumerate(items)
    ]


def _model_version(field: str, value: str) -> str:
    if len(value) > 200:
        raise InvalidArgument(field, "must be at most 200 characters")
    return value
