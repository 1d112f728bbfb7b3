"""The ``--db`` option of the control plane's offline commands (``backup``, ``db``): the URL
given, from the environment or the server's default, checked; its SQLite file; and how it
is shown (without a password)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from modelplane.cli._extras import extra
from modelplane.cli._output import EXIT_USAGE, CliError
from modelplane.errors import InvalidArgument

DB_HELP = (
    "sqlite:///PATH or postgresql://... (default: MODELPLANE_DB_URL, else "
    "sqlite:///.modelplane/controlplane.db, as serve)"
)


def db_url(args: argparse.Namespace) -> str:
    """--db, else MODELPLANE_DB_URL, else the server's default; checked, or exit 2."""
    with extra("controlplane", "the control plane"):
        from controlplane.settings import ControlPlaneSettings
        from controlplane.store import check_db_url
    default = str(ControlPlaneSettings.model_fields["db_url"].default)
    url = getattr(args, "db", None) or os.environ.get("MODELPLANE_DB_URL") or default
    try:
        check_db_url(url)
    except InvalidArgument as exc:
        raise CliError(f"--db: {exc.message}", EXIT_USAGE, reason=exc.reason) from None
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for PostgreSQL."""
    from sqlalchemy.engine import make_url

    from controlplane.store.engine import normalize_url

    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite":
        return None
    return Path(str(parsed.database)).expanduser()


def shown(url: str) -> str:
    """The URL without its password (and without the driver name: as libpq takes it)."""
    from sqlalchemy.engine import URL, make_url

    from controlplane.store.engine import normalize_url

    if sqlite_path(url) is not None:
        return url
    parsed = make_url(normalize_url(url))
    bare = URL.create(
        "postgresql",
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    )
    return bare.render_as_string(hide_password=False)
