"""The gRPC servicers: `atelier.v1.ControlPlane`, split by area, and `atelier.v1.TrainingData`."""

from __future__ import annotations

from collections.abc import Callable

from control_plane.admission import AdmissionRules
from control_plane.bootstrap import ControlPlaneDeps
from control_plane.config import ControlPlaneConfig
from control_plane.entrypoints.servicers.accounts import AccountRpcs
from control_plane.entrypoints.servicers.content import ContentRpcs
from control_plane.entrypoints.servicers.credits import CreditRpcs
from control_plane.entrypoints.servicers.privacy import PrivacyRpcs
from control_plane.entrypoints.servicers.provenance import ProvenanceRpcs
from control_plane.entrypoints.servicers.tenants import TenantRpcs
from control_plane.entrypoints.servicers.training import TrainingDataServicer

__all__ = ["ControlPlaneServicer", "TrainingDataServicer"]


class ControlPlaneServicer(AccountRpcs, CreditRpcs, ContentRpcs, PrivacyRpcs, TenantRpcs, ProvenanceRpcs):
    """Every RPC of control_plane.proto: each area's class contributes its own."""

    def __init__(
        self, *, config: ControlPlaneConfig, deps: ControlPlaneDeps, database_up: Callable[[], bool] = lambda: True
    ) -> None:
        """Serves with these dependencies; nothing is opened here. `database_up` as for `authorized`."""
        super().__init__(deps=deps, admission=AdmissionRules.from_config(config, deps.clock), database_up=database_up)
