"""What a principal's scopes allow."""

from __future__ import annotations

from uuid import uuid4

import pytest

from control_plane.api_keys import Principal, Scope


@pytest.mark.parametrize("scope", list(Scope))
def test_admin_implies_every_scope(scope: Scope) -> None:
    assert Principal("ak_0123456789abcdef", uuid4(), frozenset({Scope.ADMIN})).allows(scope)


def test_other_scopes_allow_only_themselves() -> None:
    reader = Principal("ak_0123456789abcdef", uuid4(), frozenset({Scope.READ}))
    assert reader.allows(Scope.READ)
    assert not reader.allows(Scope.GENERATE)
    assert not reader.allows(Scope.ADMIN)
