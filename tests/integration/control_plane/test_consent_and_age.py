"""Consent records (append-only, current state, history, withdrawal) and the age gate."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import psycopg
import pytest

from control_plane.db.pool import Pool
from control_plane.policy import PolicyRegistry
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._privacy import generate, new_item, use_profile
from tests.integration.control_plane._support import CLOCK_START, Caller, error_reason


def _record(
    stub: ControlPlaneStub,
    caller: Caller,
    account: str,
    purpose: int,
    granted: bool,
    method: int = pb.CONSENT_METHOD_SETTINGS,
) -> pb.ConsentRecord:
    request = pb.RecordConsentRequest(account_id=account, purpose=purpose, granted=granted, method=method, source="web")
    return stub.RecordConsent(request, metadata=caller.metadata).record


def _state(stub: ControlPlaneStub, caller: Caller, account: str) -> pb.GetConsentsResponse:
    return stub.GetConsents(pb.GetConsentsRequest(account_id=account), metadata=caller.metadata)


def _granted(response: pb.GetConsentsResponse, purpose: int) -> tuple[bool, bool]:
    (state,) = [s for s in response.consents if s.purpose == purpose]
    return state.granted, state.explicit


class TestConsentRecords:
    def test_grant_then_withdraw_keeps_both_records_and_the_newest_wins(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], clock
    ) -> None:
        from datetime import timedelta

        account = make_account()
        assert _granted(_state(stub, operator, account), pb.CONSENT_PURPOSE_TRAINING) == (
            False,
            False,
        )  # opt_in default
        granted = _record(stub, operator, account, pb.CONSENT_PURPOSE_TRAINING, True)
        assert granted.policy_version == "2026-01" and granted.actor_key_id == operator.principal.key_id
        clock.advance(timedelta(minutes=5))
        _record(stub, operator, account, pb.CONSENT_PURPOSE_TRAINING, False, pb.CONSENT_METHOD_API)
        assert _granted(_state(stub, operator, account), pb.CONSENT_PURPOSE_TRAINING) == (False, True)
        history = stub.ListConsentHistory(pb.ListConsentHistoryRequest(account_id=account), metadata=operator.metadata)
        assert [(r.granted, r.method) for r in history.records] == [
            (True, pb.CONSENT_METHOD_SETTINGS),
            (False, pb.CONSENT_METHOD_API),
        ]
        assert history.records[0].recorded_at.ToDatetime() < history.records[1].recorded_at.ToDatetime()

    def test_records_cannot_be_changed_in_the_database(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], pool: Pool
    ) -> None:
        _record(stub, operator, make_account(), pb.CONSENT_PURPOSE_MARKETING, True)
        with pool.connection() as conn, pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute("UPDATE consents SET granted = false")

    def test_opt_out_profiles_count_training_as_granted_until_withdrawn(
        self,
        stub: ControlPlaneStub,
        operator: Caller,
        make_account: Callable[..., str],
        pool: Pool,
        policies: PolicyRegistry,
    ) -> None:
        use_profile(pool, policies, operator, "credits-moderated", CLOCK_START)
        account = make_account()
        state = _state(stub, operator, account)
        assert state.training_consent_mode == pb.TRAINING_CONSENT_MODE_OPT_OUT
        assert _granted(state, pb.CONSENT_PURPOSE_TRAINING) == (True, False)
        assert _granted(state, pb.CONSENT_PURPOSE_MARKETING) == (False, False)
        _record(stub, operator, account, pb.CONSENT_PURPOSE_TRAINING, False)
        assert _granted(_state(stub, operator, account), pb.CONSENT_PURPOSE_TRAINING) == (False, True)

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"purpose": 0, "method": pb.CONSENT_METHOD_API, "source": "web"}, "purpose"),
            ({"purpose": pb.CONSENT_PURPOSE_TRAINING, "method": 0, "source": "web"}, "method"),
            ({"purpose": pb.CONSENT_PURPOSE_TRAINING, "method": pb.CONSENT_METHOD_API, "source": ""}, "source"),
            ({"purpose": 99, "method": pb.CONSENT_METHOD_API, "source": "web"}, "purpose"),
        ],
    )
    def test_a_malformed_record_names_the_field(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], fields: dict, field: str
    ) -> None:
        with pytest.raises(grpc.RpcError) as error:
            stub.RecordConsent(pb.RecordConsentRequest(account_id=make_account(), **fields), metadata=operator.metadata)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith(field)

    def test_consent_calls_need_the_privacy_scope(
        self, stub: ControlPlaneStub, make_key: Callable[..., str], make_account: Callable[..., str]
    ) -> None:
        secret = make_key(pb.SCOPE_READ, pb.SCOPE_GENERATE)
        with pytest.raises(grpc.RpcError) as error:
            stub.GetConsents(
                pb.GetConsentsRequest(account_id=make_account()), metadata=(("authorization", f"Bearer {secret}"),)
            )
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


class TestGuardianGate:
    def test_a_minor_under_the_guardian_age_cannot_generate_until_a_guardian_consents(
        self, stub: ControlPlaneStub, operator: Caller, pool: Pool, policies: PolicyRegistry
    ) -> None:
        use_profile(pool, policies, operator, "opt-out-guardian-consent", CLOCK_START)
        minor = stub.CreateAccount(
            pb.CreateAccountRequest(birth_date="2010-06-01", initial_credits=10), metadata=operator.metadata
        ).account.account_id
        state = _state(stub, operator, minor)
        assert state.guardian_consent_required and not state.may_process
        with pytest.raises(grpc.RpcError) as error:
            stub.ReserveCredits(pb.ReserveCreditsRequest(account_id=minor, amount=1), metadata=operator.metadata)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error.value) == "GUARDIAN_CONSENT_REQUIRED"
        with pytest.raises(grpc.RpcError) as error:
            stub.StoreContent(pb.StoreContentRequest(account_id=minor, items=[new_item(1)]), metadata=operator.metadata)
        assert error_reason(error.value) == "GUARDIAN_CONSENT_REQUIRED"
        # A grant by the user themself is not a guardian's.
        _record(stub, operator, minor, pb.CONSENT_PURPOSE_PROCESSING, True, pb.CONSENT_METHOD_SETTINGS)
        assert not _state(stub, operator, minor).may_process

        _record(stub, operator, minor, pb.CONSENT_PURPOSE_PROCESSING, True, pb.CONSENT_METHOD_GUARDIAN)
        assert _state(stub, operator, minor).may_process
        (item,) = generate(stub, operator, minor, new_item(1)).contents
        with pool.connection() as conn:
            personal = conn.execute(
                "SELECT birth_date, age_attested, guardian_required FROM account_personal WHERE account_id = %s",
                (minor,),
            ).fetchone()
            (by_minor,) = conn.execute(
                "SELECT created_by_minor FROM content WHERE content_id = %s", (item.content_id,)
            ).fetchone()
        assert personal[0].isoformat() == "2010-06-01" and personal[1] is None and personal[2] is True
        assert by_minor is True

    def test_the_rule_is_off_by_default_but_minors_content_is_still_marked(
        self, stub: ControlPlaneStub, operator: Caller, pool: Pool
    ) -> None:
        teen = stub.CreateAccount(
            pb.CreateAccountRequest(birth_date="2010-06-01", initial_credits=5), metadata=operator.metadata
        )
        (item,) = generate(stub, operator, teen.account.account_id, new_item(1)).contents
        with pool.connection() as conn:
            (by_minor,) = conn.execute(
                "SELECT created_by_minor FROM content WHERE content_id = %s", (item.content_id,)
            ).fetchone()
        assert by_minor is True

    def test_under_the_minimum_age_nothing_is_stored(
        self, stub: ControlPlaneStub, operator: Caller, pool: Pool
    ) -> None:
        with pytest.raises(grpc.RpcError) as error:
            stub.CreateAccount(pb.CreateAccountRequest(birth_date="2015-01-01"), metadata=operator.metadata)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM account_personal").fetchone()[0] == 0
