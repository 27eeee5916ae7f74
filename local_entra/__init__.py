"""A local stand-in for Microsoft Entra ID (v2.0 endpoints) and Microsoft Graph ``/v1.0/me``.

Lets the sample app sign users in, refresh tokens and call Graph with no
Azure tenant and no Internet: ``StandIn(...).start().settings`` gives the
AUTHORITY, CLIENT_ID, CLIENT_SECRET, ENDPOINT and CA bundle to use.
``StandIn(b2c=True)`` serves the tenant as Azure AD B2C instead (``local_entra.b2c``):
its settings name the tenant, its user flows and B2C_DOMAIN rather than AUTHORITY.
"""

from .standin import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, TENANT_ID, StandIn
from .users import USERS

__all__ = ["DEFAULT_CLIENT_ID", "DEFAULT_CLIENT_SECRET", "TENANT_ID", "USERS", "StandIn"]
