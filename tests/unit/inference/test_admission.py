"""Admission to a model pool: bounded by what its running replicas serve within about two batch cycles."""

from __future__ import annotations

from inference.admission import PoolAdmission, admission_limit
from inference.config import ModelConfig


class TestAdmissionLimit:
    def test_a_replica_takes_its_ongoing_requests_and_one_more_batch(self) -> None:
        model = ModelConfig(name="m", max_ongoing_requests=8, max_batch_size=8, max_queued_requests=64)
        assert admission_limit(model, 1) == 16
        assert admission_limit(model, 3) == 48

    def test_the_queue_never_exceeds_max_queued_requests(self) -> None:
        model = ModelConfig(name="m", max_ongoing_requests=8, max_batch_size=8, max_queued_requests=5)
        assert admission_limit(model, 4) == 4 * 8 + 5

    def test_a_pool_with_no_known_replica_counts_as_one(self) -> None:
        model = ModelConfig(name="m", max_ongoing_requests=4, max_batch_size=2)
        assert admission_limit(model, None) == admission_limit(model, 0) == admission_limit(model, 1) == 6

    def test_an_unbounded_queue_admits_everything(self) -> None:
        assert admission_limit(ModelConfig(name="m", max_queued_requests=-1), 1) is None


class TestPoolAdmission:
    def test_no_room_at_the_limit_until_a_slot_is_left(self) -> None:
        admission = PoolAdmission()
        slots = [admission.enter("pool") for _ in range(2)]
        assert not admission.has_room("pool", 2)
        assert admission.has_room("other", 2), "pools are bounded separately"
        slots[0].leave()
        slots[0].leave()  # idempotent: frees one place only
        assert admission.admitted("pool") == 1
        assert admission.has_room("pool", 2)

    def test_without_a_limit_there_is_always_room(self) -> None:
        admission = PoolAdmission()
        for _ in range(1000):
            admission.enter("pool")
        assert admission.has_room("pool", None)
