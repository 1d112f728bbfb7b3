"""Access control of the control plane: identity providers (bearer tokens from a file, JWTs,
loopback clients while it is off), the permission table, the authorization step, and TLS."""

from controlplane.auth.access import AccessControl, build, is_loopback_listen
from controlplane.auth.errors import AccessConfigError
from controlplane.auth.permissions import BUILT_IN_ROLES, PERMISSIONS, Rule, Scope
from controlplane.auth.policy import PermissionPolicy

__all__ = [
    "BUILT_IN_ROLES",
    "PERMISSIONS",
    "AccessConfigError",
    "AccessControl",
    "PermissionPolicy",
    "Rule",
    "Scope",
    "build",
    "is_loopback_listen",
]
