"""Tenant settings: SetIdentityProvider, GetIdentityProvider (the caller's own tenant only)."""

from __future__ import annotations

import grpc
from typing_extensions import override

from control_plane import tenants
from control_plane.api_keys import Scope
from control_plane.entrypoints import convert
from control_plane.entrypoints.servicers._base import ControlPlaneRpcs
from control_plane.errors import PermissionDenied
from protos.atelier.v1 import control_plane_pb2


class TenantRpcs(ControlPlaneRpcs):
    """The tenant-settings RPCs of control_plane.proto."""

    @override
    def SetIdentityProvider(
        self, request: control_plane_pb2.SetIdentityProviderRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.SetIdentityProviderResponse:
        """Sets (or, unset, removes) the caller's tenant's OIDC provider; audited. Scope: admin."""
        with self._call(context, Scope.ADMIN, "SetIdentityProvider") as (conn, caller):
            provider = convert.parse_identity_provider(request.provider) if request.HasField("provider") else None
            # A file:// key set is read from the control plane's own disk: only its operator may name one.
            reads_local_file = provider is not None and provider.jwks.startswith("file://")
            if reads_local_file and not tenants.is_operator_tenant(conn, caller.tenant_id):
                raise PermissionDenied(
                    "provider.jwks: only the operator's tenant may name a file:// key set (it is read on the "
                    "control plane's host); send the key set inline or as an https:// URL"
                )
            tenants.set_identity_provider(
                conn, tenant_id=caller.tenant_id, provider=provider, actor=caller.actor, now=caller.now
            )
        return control_plane_pb2.SetIdentityProviderResponse(
            provider=convert.identity_provider_pb(provider) if provider is not None else None
        )

    @override
    def GetIdentityProvider(
        self, request: control_plane_pb2.GetIdentityProviderRequest, context: grpc.ServicerContext
    ) -> control_plane_pb2.GetIdentityProviderResponse:
        """The caller's tenant's OIDC provider, unset when it has none. Scope: admin."""
        with self._call(context, Scope.ADMIN, "GetIdentityProvider") as (conn, caller):
            provider = tenants.identity_provider(conn, caller.tenant_id)
        return control_plane_pb2.GetIdentityProviderResponse(
            provider=convert.identity_provider_pb(provider) if provider is not None else None
        )
