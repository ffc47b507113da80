"""The privacy invariants of training data, under random sequences of user and operator actions.

A hypothesis state machine drives generate, set visibility, grant/withdraw consent, opt out,
erase (an item or an account), advance the clock, sweep and export through the real server
and jobs, and keeps a small model of what each item is allowed to be. After every step:

- every training export holds exactly the items the model says were eligible when it ran;
- every exported item that is no longer eligible is in that export's removal manifest;
- CheckTrainingEligibility agrees with the model for every item ever stored;
- the public gallery lists exactly the live public items, and a data-subject export holds
  exactly the account's live items.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import grpc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from control_plane.api_keys import ensure_operator_key
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1 import training_pb2 as tpb
from tests.integration.control_plane._privacy import generate, new_item
from tests.integration.control_plane._support import CLOCK_START, Caller, png_bytes
from tests.integration.control_plane._training import export_training, sweep, training_stub

RETENTION = timedelta(days=30)
"""The default profile: free tier generated images kept 30 days; opt_in; only public content."""


@dataclass
class ModelAccount:
    account_id: str
    premium: bool
    consent: bool | None = None
    opted_out: bool = False
    erased: bool = False


@dataclass
class ModelItem:
    content_id: str
    sha256: str
    account: ModelAccount
    created_at: datetime
    public: bool
    gone: bool = False
    """Erased or swept."""


@dataclass
class ModelExport:
    export_id: str
    item_ids: dict[str, str] = field(default_factory=dict)
    """sha256 -> item_id in the export."""


@pytest.mark.timeout(600)
def test_training_data_invariants_hold_after_every_step(  # type: ignore[no-untyped-def]
    pool, blobs, keys, policies, clock, channel, stub, data_tables, tmp_path_factory
) -> None:
    export_root = tmp_path_factory.mktemp("invariant-exports")
    training = training_stub(channel)

    pick = st.integers(min_value=0, max_value=63)
    """Rules pick an account or item by index (modulo how many exist), so shrinking stays simple."""

    class TrainingDataMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            with pool.connection() as conn:
                conn.execute(f"TRUNCATE {', '.join(data_tables)} RESTART IDENTITY CASCADE")
            clock.set(CLOCK_START)
            principal, secret = ensure_operator_key(pool, "test", now=CLOCK_START)
            if secret is None:
                raise RuntimeError("the operator key must be new after TRUNCATE")
            self.caller = Caller(principal, secret)
            self.all_items: list[ModelItem] = []
            self.all_accounts: list[ModelAccount] = []
            self.exports: list[ModelExport] = []
            self.seed = 0

        # --- model -----------------------------------------------------------------------

        def eligible(self, item: ModelItem) -> bool:
            account = item.account
            return (
                not item.gone
                and not account.erased
                and (account.premium or clock.now() < item.created_at + RETENTION)
                and not account.opted_out
                and account.consent is True
                and item.public
            )

        # --- rules -----------------------------------------------------------------------

        def account_at(self, index: int) -> ModelAccount:
            return self.all_accounts[index % len(self.all_accounts)]

        @initialize()
        def start_with_consenting_accounts_and_public_items(self) -> None:
            # So that short runs already have something exported to take away again.
            for premium in (False, True):
                self.create_account(premium)
                self.record_training_consent(len(self.all_accounts) - 1, True)
                for _ in range(2):
                    self.generate(len(self.all_accounts) - 1, True)

        @rule(premium=st.booleans())
        def create_account(self, premium: bool) -> None:
            response = stub.CreateAccount(
                pb.CreateAccountRequest(
                    birth_date="1990-05-17",
                    initial_credits=1000,
                    tier=pb.TIER_PREMIUM if premium else pb.TIER_FREE,
                ),
                metadata=self.caller.metadata,
            )
            self.all_accounts.append(ModelAccount(response.account.account_id, premium))

        @rule(index=pick, public=st.booleans())
        def generate(self, index: int, public: bool) -> None:
            account = self.account_at(index)
            if account.erased:
                with pytest.raises(grpc.RpcError) as error:
                    generate(stub, self.caller, account.account_id, new_item(0))
                assert error.value.code() is grpc.StatusCode.FAILED_PRECONDITION
                return
            self.seed += 1
            visibility = common_pb2.VISIBILITY_PUBLIC if public else common_pb2.VISIBILITY_PRIVATE
            stored = generate(
                stub, self.caller, account.account_id, new_item(self.seed, visibility=visibility)
            ).contents[0]
            item = ModelItem(
                stored.content_id, hashlib.sha256(png_bytes(self.seed)).hexdigest(), account, clock.now(), public
            )
            self.all_items.append(item)

        @rule(index=pick, public=st.booleans())
        def set_visibility(self, index: int, public: bool) -> None:
            item = self.all_items[index % len(self.all_items)]
            if item.gone or item.account.erased:
                return
            stub.SetVisibility(
                pb.SetVisibilityRequest(
                    content_id=item.content_id,
                    visibility=common_pb2.VISIBILITY_PUBLIC if public else common_pb2.VISIBILITY_PRIVATE,
                ),
                metadata=self.caller.metadata,
            )
            item.public = public

        @rule(index=pick, granted=st.booleans())
        def record_training_consent(self, index: int, granted: bool) -> None:
            account = self.account_at(index)
            if account.erased:
                return
            stub.RecordConsent(
                pb.RecordConsentRequest(
                    account_id=account.account_id,
                    purpose=pb.CONSENT_PURPOSE_TRAINING,
                    granted=granted,
                    method=pb.CONSENT_METHOD_SETTINGS,
                    source="web",
                ),
                metadata=self.caller.metadata,
            )
            account.consent = granted

        @rule(index=pick)
        def opt_out(self, index: int) -> None:
            account = self.account_at(index)
            if account.erased:
                return
            training.OptOut(
                tpb.OptOutRequest(account_id=account.account_id, source="web"), metadata=self.caller.metadata
            )
            account.opted_out = True

        @rule(index=pick)
        def erase_item(self, index: int) -> None:
            item = self.all_items[index % len(self.all_items)]
            if item.gone or item.account.erased:
                return
            stub.RequestErasure(
                pb.RequestErasureRequest(account_id=item.account.account_id, content_id=item.content_id),
                metadata=self.caller.metadata,
            )
            item.gone = True

        @rule(index=pick)
        def erase_account(self, index: int) -> None:
            account = self.account_at(index)
            if account.erased:
                return
            stub.RequestErasure(pb.RequestErasureRequest(account_id=account.account_id), metadata=self.caller.metadata)
            account.erased = True
            for item in self.all_items:
                if item.account is account:
                    item.gone = True

        @rule(days=st.sampled_from([1, 10, 29, 31]))
        def advance_clock(self, days: int) -> None:
            clock.advance(timedelta(days=days))

        @rule()
        def run_sweep(self) -> None:
            sweep(pool, blobs, policies, clock.now(), batch_size=3)
            for item in self.all_items:
                if not item.account.premium and clock.now() >= item.created_at + RETENTION:
                    item.gone = True

        @rule()
        def export(self) -> None:
            made = export_training(pool, blobs, keys, policies, now=clock.now(), output_dir=export_root)
            rows = pq.read_table(made.directory).to_pylist() if made.files else []
            exported = {row["sha256"]: row["item_id"] for row in rows}
            assert set(exported) == {i.sha256 for i in self.all_items if self.eligible(i)}
            for row in rows:
                assert hashlib.sha256(row["image"]).hexdigest() == row["sha256"]
            self.exports.append(ModelExport(str(made.export_id), exported))

        @rule(index=pick)
        def data_subject_export(self, index: int) -> None:
            account = self.account_at(index)
            if account.erased:
                return
            request = stub.RequestExport(
                pb.RequestExportRequest(account_id=account.account_id), metadata=self.caller.metadata
            ).request
            archive = stub.GetExportArchive(
                pb.GetExportArchiveRequest(dsr_id=request.dsr_id), metadata=self.caller.metadata
            ).archive
            with zipfile.ZipFile(io.BytesIO(archive)) as unpacked:
                images = {n for n in unpacked.namelist() if n.startswith("images/")}
            live = {f"images/{i.content_id}.png" for i in self.all_items if i.account is account and not i.gone}
            assert images == live

        # --- invariants ------------------------------------------------------------------

        @invariant()
        def removal_manifests_list_every_exported_item_no_longer_eligible(self) -> None:
            by_sha = {item.sha256: item for item in self.all_items}
            for made in self.exports:
                listed = {
                    r.item_id
                    for r in training.ListRemovals(
                        tpb.ListRemovalsRequest(export_id=made.export_id, page_size=10_000),
                        metadata=self.caller.metadata,
                    ).removals
                }
                for sha, item_id in made.item_ids.items():
                    if not self.eligible(by_sha[sha]):
                        assert item_id in listed, f"{by_sha[sha]} left its export but is not in its removals"

        @invariant()
        def eligibility_lookups_agree_with_the_model(self) -> None:
            for item in self.all_items:
                answer = training.CheckTrainingEligibility(
                    tpb.CheckTrainingEligibilityRequest(sha256=item.sha256), metadata=self.caller.metadata
                )
                assert answer.eligible == self.eligible(item), (item, answer)

        @invariant()
        def the_public_gallery_lists_exactly_the_live_public_items(self) -> None:
            listed = {
                c.content_id
                for c in stub.ListPublicGallery(
                    pb.ListPublicGalleryRequest(page_size=100), metadata=self.caller.metadata
                ).contents
            }
            assert listed == {i.content_id for i in self.all_items if i.public and not i.gone}

    run_state_machine_as_test(
        TrainingDataMachine,
        settings=settings(
            max_examples=15,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
