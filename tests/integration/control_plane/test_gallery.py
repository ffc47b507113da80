"""The gallery: visibility per item and per account, the public listing, who may read what."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from atelier.cli import main
from control_plane.api_keys import ensure_operator_key
from control_plane.db.pool import Pool
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._privacy import generate, new_item
from tests.integration.control_plane._support import CLOCK_START, Caller, png_bytes

PUBLIC, PRIVATE = common_pb2.VISIBILITY_PUBLIC, common_pb2.VISIBILITY_PRIVATE


def _gallery(stub: ControlPlaneStub, caller: Caller, page_size: int = 100) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = stub.ListPublicGallery(
            pb.ListPublicGalleryRequest(page_size=page_size, page_token=token), metadata=caller.metadata
        )
        ids.extend(c.content_id for c in page.contents)
        assert all(c.prompt == "" for c in page.contents)
        if not page.next_page_token:
            return ids
        token = page.next_page_token


class TestVisibility:
    def test_one_item_can_be_published_and_hidden_again(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account = make_account(credits=5)
        (item,) = generate(stub, operator, account, new_item(1)).contents
        assert item.visibility == PRIVATE and _gallery(stub, operator) == []
        published = stub.SetVisibility(
            pb.SetVisibilityRequest(content_id=item.content_id, visibility=PUBLIC), metadata=operator.metadata
        )
        assert published.updated_count == 1 and published.content.visibility == PUBLIC
        assert _gallery(stub, operator) == [item.content_id]
        stub.SetVisibility(
            pb.SetVisibilityRequest(content_id=item.content_id, visibility=PRIVATE), metadata=operator.metadata
        )
        assert _gallery(stub, operator) == []

    def test_the_default_switch_changes_new_images_only_and_the_cli_sets_it(
        self,
        stub: ControlPlaneStub,
        operator: Caller,
        make_account: Callable[..., str],
        cli_env: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        account = make_account(credits=5)
        (old,) = generate(stub, operator, account, new_item(1)).contents

        assert main(["gallery", "default", account, "public", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["default_visibility"] == "public"

        (new,) = generate(stub, operator, account, new_item(2)).contents
        assert new.visibility == PUBLIC
        assert _gallery(stub, operator) == [new.content_id]
        kept = stub.GetContent(pb.GetContentRequest(content_id=old.content_id), metadata=operator.metadata)
        assert kept.content.visibility == PRIVATE
        got = stub.GetAccount(pb.GetAccountRequest(account_id=account), metadata=operator.metadata).account
        assert got.default_visibility == PUBLIC

    def test_all_of_an_accounts_content_at_once_and_its_default(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account = make_account(credits=5, default_visibility=PUBLIC)
        items = generate(stub, operator, account, new_item(1), new_item(2)).contents
        assert {c.visibility for c in items} == {PUBLIC}
        response = stub.SetVisibility(
            pb.SetVisibilityRequest(account_id=account, visibility=PRIVATE, apply_to_default=True),
            metadata=operator.metadata,
        )
        assert response.updated_count == 2 and _gallery(stub, operator) == []
        (later,) = generate(stub, operator, account, new_item(3)).contents
        assert later.visibility == PRIVATE
        account_pb = stub.GetAccount(pb.GetAccountRequest(account_id=account), metadata=operator.metadata).account
        assert account_pb.default_visibility == PRIVATE

    def test_the_public_gallery_pages_newest_first_with_a_cursor(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], clock
    ) -> None:
        from datetime import timedelta

        account = make_account(credits=20, default_visibility=PUBLIC)
        ids = []
        for seed in range(5):
            clock.advance(timedelta(seconds=1))
            ids.append(generate(stub, operator, account, new_item(seed)).contents[0].content_id)
        generate(stub, operator, account, new_item(9, visibility=PRIVATE))
        assert _gallery(stub, operator, page_size=2) == list(reversed(ids))

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"visibility": PUBLIC}, "content_id"),
            ({"content_id": "x", "account_id": "y", "visibility": PUBLIC}, "content_id"),
            ({"content_id": "00000000-0000-4000-8000-000000000000"}, "visibility"),
        ],
    )
    def test_a_malformed_request_names_the_field(
        self, stub: ControlPlaneStub, operator: Caller, fields: dict, field: str
    ) -> None:
        with pytest.raises(grpc.RpcError) as error:
            stub.SetVisibility(pb.SetVisibilityRequest(**fields), metadata=operator.metadata)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith(field)

    def test_setting_visibility_needs_the_privacy_scope(
        self, stub: ControlPlaneStub, make_key: Callable[..., str], make_account: Callable[..., str]
    ) -> None:
        account = make_account()
        secret = make_key(pb.SCOPE_GENERATE, pb.SCOPE_READ)
        with pytest.raises(grpc.RpcError) as error:
            stub.SetVisibility(
                pb.SetVisibilityRequest(account_id=account, visibility=PRIVATE),
                metadata=(("authorization", f"Bearer {secret}"),),
            )
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'privacy'" in error.value.details()


class TestNoLeaksAcrossAccounts:
    def test_another_accounts_calls_never_read_private_content(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        owner, other = make_account(credits=5), make_account(credits=5)
        private, public = generate(stub, operator, owner, new_item(1), new_item(2, visibility=PUBLIC)).contents

        # The owner always reads its own content, prompt included.
        own = stub.GetContent(
            pb.GetContentRequest(content_id=private.content_id, include_data=True, viewer_account_id=owner),
            metadata=operator.metadata,
        )
        assert own.data == png_bytes(1) and own.content.prompt
        # Another account: private is not found, public readable without its prompt.
        with pytest.raises(grpc.RpcError) as error:
            stub.GetContent(
                pb.GetContentRequest(content_id=private.content_id, include_data=True, viewer_account_id=other),
                metadata=operator.metadata,
            )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        seen = stub.GetContent(
            pb.GetContentRequest(content_id=public.content_id, include_data=True, viewer_account_id=other),
            metadata=operator.metadata,
        )
        assert seen.data == png_bytes(2) and seen.content.prompt == ""
        listed = stub.ListContent(
            pb.ListContentRequest(account_id=owner, viewer_account_id=other), metadata=operator.metadata
        )
        assert [c.content_id for c in listed.contents] == [public.content_id]
        assert all(c.prompt == "" for c in listed.contents)
        mine = stub.ListContent(
            pb.ListContentRequest(account_id=owner, viewer_account_id=owner), metadata=operator.metadata
        )
        assert len(mine.contents) == 2

    def test_another_tenant_sees_nothing_not_even_public_content(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], pool: Pool
    ) -> None:
        owner = make_account(credits=5)
        (public,) = generate(stub, operator, owner, new_item(1, visibility=PUBLIC)).contents
        principal, secret = ensure_operator_key(pool, "elsewhere", now=CLOCK_START)
        stranger = Caller(principal, secret or "")
        assert _gallery(stub, stranger) == []
        with pytest.raises(grpc.RpcError) as error:
            stub.GetContent(pb.GetContentRequest(content_id=public.content_id), metadata=stranger.metadata)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as error:
            stub.SetVisibility(
                pb.SetVisibilityRequest(content_id=public.content_id, visibility=PRIVATE), metadata=stranger.metadata
            )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
