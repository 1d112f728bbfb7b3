"""Code lineage as the SDK records it: a repository URL without the credentials a git remote
may carry (lineage cannot be changed later and every reader of the version sees it), and the
repository and commit git gives for the code here."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

# ``scheme://userinfo@host...``: the userinfo runs up to the last "@" before the path.
_AUTHORITY = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)@")
#: Schemes whose user name is a login on the host (``ssh://git@host/...``), not a secret.
_USER_IS_LOGIN = frozenset({"ssh", "git+ssh", "ssh+git"})
#: Where else a URL's userinfo may sit, as the control plane looks for it: a scheme anywhere,
#: any slashes ("\\" too, which some parsers take for "/"), the userinfo up to the last "@".
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):([/\\]*)([^/\\?#\s]*)@")
#: A query string or fragment after a scheme or an scp-like ``host:`` (a Windows drive letter,
#: ``C:\\`` or ``C:/``, is neither), which the control plane refuses as a place for a token
#: (``?access_token=...``).
_QUERY = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]+:|[A-Za-z]:(?![/\\]))[^?#]*[?#]")


def _secret(url: str) -> re.Match[str] | None:
    """The first place in ``url`` the control plane would refuse as credentials: a password
    after a scheme, a user name after an http(s) one, or ``user:secret@`` right after a "/",
    "\\" or ":"; None when there is none."""
    for match in _USERINFO.finditer(url):
        scheme, slashes, userinfo = match.groups()
        if ":" in userinfo or any(p in ("http", "https") for p in scheme.lower().split("+")):
            return match
        if not slashes and match.start() > 0 and url[match.start() - 1] in "/\\:":
            return match
    return None


def without_credentials(url: str) -> str:
    """``url`` without the credentials a git remote may carry, for recording in lineage.

    In a ``scheme://user:password@host/...`` URL the password is always dropped; the user
    name is dropped too unless the scheme is ssh (``ssh://git@host/...``, a login name), since
    over http(s) a token often goes as the user name (``https://TOKEN@github.com/...``).
    scp-like remotes (``git@host:org/repo``) and local paths have no password and pass as
    they are. A query string or fragment (``?access_token=...``, ``#...``), which git remotes
    do not have and where a token can go, is dropped with what follows it. Characters that do
    not print (a zero-width space) and surrounding whitespace, which the control plane
    refuses, are dropped first, and then whatever else it would take for credentials
    (``https:user:pw@host``, ``https:///user:pw@host``): the URL returned is one it records."""
    url = "".join(ch for ch in url if ch.isprintable()).strip()
    query = _QUERY.search(url)
    if query is not None:
        url = url[: query.end() - 1].rstrip()
    match = _AUTHORITY.match(url)
    if match is not None:
        prefix, userinfo = match.group(1), match.group(2)
        scheme = prefix[:-3].lower()
        user = userinfo.partition(":")[0]
        kept = f"{user}@" if scheme in _USER_IS_LOGIN and user else ""
        url = prefix + kept + url[match.end() :]
    while (found := _secret(url)) is not None:
        scheme, slashes, userinfo = found.groups()
        if slashes or ":" in userinfo:
            # scheme:[//]userinfo@: the userinfo goes (an ssh login keeps its user name).
            user = userinfo.partition(":")[0]
            login = slashes and scheme.lower() in _USER_IS_LOGIN and user and "@" not in user
            start, kept = found.start(3), f"{user}@" if login else ""
        else:
            # user:secret@ after a "/": both go.
            start, kept = found.start(), ""
        url = url[:start] + kept + url[found.end() :]
    return url


@dataclass(frozen=True)
class GitLineage:
    """What git says about the code here: the ``origin`` remote (as git has it, credentials
    included) and the ``HEAD`` commit, with ``-dirty`` appended when tracked files differ from
    it (as ``git describe --dirty`` marks a build); ``problem`` is git's reason when there is a
    repository here but git gave no commit for it (git missing, a repository git refuses as
    of "dubious ownership", no commit yet), "" otherwise."""

    repository: str = ""
    commit: str = ""
    problem: str = ""
    #: git's reason when it gave the commit but could not tell whether tracked files differ
    #: from it (a damaged index, a status past the timeout): the commit has no ``-dirty``.
    unsure: str = ""


#: Seconds each git command may take.
GIT_TIMEOUT_S = 5.0


def _git(argv: list[str], cwd: Path | None) -> tuple[int, str, str]:
    """``git ARGV``'s exit status, stdout and stderr (bytes that are not UTF-8, as in a
    remote URL in another encoding, as ``\\xNN`` escapes); status -1 with the reason as
    stderr when git could not be run."""
    try:
        done = subprocess.run(
            ["git", *argv], cwd=cwd, capture_output=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return -1, "", f"git {argv[0]} took more than {GIT_TIMEOUT_S:g} s"
    except OSError as exc:
        return -1, "", f"cannot run git: {exc.strerror or exc}"

    def text(data: bytes) -> str:
        return data.decode("utf-8", "backslashreplace").strip()

    return done.returncode, text(done.stdout), text(done.stderr)


def _repository_here(cwd: Path | None) -> bool:
    """Whether a ``.git`` (folder or file) is in ``cwd`` or a folder above, or ``GIT_DIR``
    names one: there is a repository, whatever git says about it."""
    if os.environ.get("GIT_DIR"):
        return True
    here = (cwd or Path.cwd()).resolve()
    return any((folder / ".git").exists() for folder in (here, *here.parents))


def git_lineage(cwd: Path | None = None) -> GitLineage:
    """The code lineage git gives for ``cwd`` (default: the current folder); empty, with no
    problem, where there is no repository at all."""
    status, commit, error = _git(["rev-parse", "HEAD"], cwd)
    if status != 0:
        if not _repository_here(cwd) and (status == -1 or "not a git repository" in error):
            return GitLineage()
        return GitLineage(problem=" ".join(error.split()) or f"git exited with status {status}")
    status, changes, error = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    unsure = ""
    if status != 0:
        unsure = " ".join(error.split()) or f"git status exited with status {status}"
    elif changes:
        commit += "-dirty"
    status, remote, _ = _git(["remote", "get-url", "origin"], cwd)
    return GitLineage(repository=remote if status == 0 else "", commit=commit, unsure=unsure)
