"""Provenance: VerifyProvenance."""

from __future__ import annotations

import grpc
from typing_extensions import override

from control_plane.api_keys import Scope
from control_plane.entrypoints.servicers._base import ControlPlaneRpcs
from control_plane.provenance import ProvenanceReport, verify_provenance
from protos.atelier.v1 import control_plane_pb2

_MANIFEST_STATUS = {
    "absent": control_plane_pb2.MANIFEST_STATUS_ABSENT,
    "trusted": control_plane_pb2.MANIFEST_STATUS_TRUSTED,
    "untrusted": control_plane_pb2.MANIFEST_STATUS_UNTRUSTED,
    "invalid": control_plane_pb2.MANIFEST_STATUS_INVALID,
}
_WATERMARK_STATUS = {
    "found": control_plane_pb2.WATERMARK_STATUS_FOUND,
    "not_found": control_plane_pb2.WATERMARK_STATUS_NOT_FOUND,
    "too_small": control_plane_pb2.WATERMARK_STATUS_TOO_SMALL,
}


class ProvenanceRpcs(ControlPlaneRpcs):
    """The provenance RPC of control_plane.proto."""

    @override
    def VerifyProvenance(
        self, request: control_plane_pb2.VerifyProvenanceRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.VerifyProvenanceResponse:
        """Reads a file's manifest and watermark; identifies the caller's tenant's content. Scope: read."""
        with self._call(context, Scope.READ, "VerifyProvenance") as (conn, caller):
            report = verify_provenance(
                conn,
                self._policies,
                tenant_id=caller.tenant_id,
                viewer_account_id=caller.own_account(None),
                data=request.data,
                # Without signing credentials (a server built for tests of other areas) it trusts no
                # signer: manifests read as untrusted, watermarks are still found.
                trust_anchors_pem=self._signing.trust_anchors_pem if self._signing is not None else b"",
                now=caller.now,
            )
        return verify_response_pb(report)


def verify_response_pb(report: ProvenanceReport) -> control_plane_pb2.VerifyProvenanceResponse:
    """The RPC's answer from the domain report."""
    m = report.manifest
    response = control_plane_pb2.VerifyProvenanceResponse(
        media_type=report.media_type,
        manifest=control_plane_pb2.ProvenanceManifest(
            status=_MANIFEST_STATUS[m.status.value],
            explanation=m.explanation,
            failure_codes=list(m.failure_codes),
            label=m.label,
            claim_generator=m.claim_generator,
            signer=m.signer,
            actions=list(m.actions),
            digital_source_type=m.digital_source_type,
            content_id=m.content_id,
            model=m.model,
            model_version=m.model_version,
            created_at=m.created_at,
            training_use=m.training_use,
            ingredient_count=m.ingredient_count,
        ),
        watermark=_WATERMARK_STATUS[report.watermark.value],
        watermark_bit_errors=report.watermark_bit_errors,
    )
    owned = report.content
    if owned is not None:
        response.content_id = str(owned.content_id)
        response.identified_by = owned.identified_by
        response.model = owned.model
        response.created_at.FromDatetime(owned.created_at)
        response.training_use_when_made = owned.training_use_when_made
        response.eligible_for_training = owned.eligible_for_training
        response.training_explanation = owned.training_explanation
    return response
