"""Code lineage as the SDK records it: a repository URL without the credentials a git remote
may carry (lineage cannot be changed later and every reader of the version sees it)."""

from __future__ import annotations

import re

# ``scheme://userinfo@host...``: the userinfo runs up to the last "@" before the path.
_AUTHORITY = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)@")
#: Schemes whose user name is a login on the host (``ssh://git@host/...``), not a secret.
_USER_IS_LOGIN = frozenset({"ssh", "git+ssh", "ssh+git"})


def without_credentials(url: str) -> str:
    """``url`` without the credentials a git remote may carry, for recording in lineage.

    In a ``scheme://user:password@host/...`` URL the password is always dropped; the user
    name is dropped too unless the scheme is ssh (``ssh://git@host/...``, a login name), since
    over http(s) a token often goes as the user name (``https://TOKEN@github.com/...``).
    scp-like remotes (``git@host:org/repo``) and local paths have no password and pass as
    they are."""
    match = _AUTHORITY.match(url)
    if match is None:
        return url
    prefix, userinfo = match.group(1), match.group(2)
    scheme = prefix[:-3].lower()
    user = userinfo.partition(":")[0]
    kept = f"{user}@" if scheme in _USER_IS_LOGIN and user else ""
    return prefix + kept + url[match.end() :]
