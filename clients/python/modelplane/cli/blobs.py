"""``modelplane blobs`` commands: content-addressed uploads and downloads."""

from __future__ import annotations

import argparse
from pathlib import Path

from modelplane.cli._common import client, server_errors
from modelplane.cli._output import EXIT_USAGE, CliError, Printer

_BLOB_HELP = "the blob's sha256 digest, or its name blobs/SHA256 as blobs upload prints it"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``blobs`` commands."""
    b = sub.add_parser("blobs", help="upload and download content-addressed blobs")
    bs = b.add_subparsers(dest="blobs_command", metavar="ACTION", required=True)
    up = bs.add_parser("upload", help="upload a file; prints its name, blobs/SHA256")
    up.add_argument("file", type=Path)
    up.add_argument("--media-type", default="")
    up.set_defaults(handler=_upload)
    bg = bs.add_parser("get", help="show a blob's metadata")
    bg.add_argument("sha256", metavar="BLOB", help=_BLOB_HELP)
    bg.set_defaults(handler=_blob_get)
    bd = bs.add_parser("download", help="download a blob")
    bd.add_argument("sha256", metavar="BLOB", help=_BLOB_HELP)
    bd.add_argument("--out", required=True, type=Path)
    bd.set_defaults(handler=_blob_download)


def _upload(args: argparse.Namespace, out: Printer) -> int:
    if not args.file.is_file():
        raise CliError(f"{args.file}: no such file", EXIT_USAGE)
    with server_errors(), client(args) as c:
        blob = c.upload_blob(args.file, args.media_type)
    out.emit(
        blob,
        columns=["name", "size_bytes", "media_type"],
        rows=[[blob.name, blob.size_bytes, blob.media_type]],
    )
    return 0


def _blob_get(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        blob = c.get_blob(args.sha256)
    out.emit(
        blob,
        columns=["name", "size_bytes", "media_type"],
        rows=[[blob.name, blob.size_bytes, blob.media_type]],
    )
    return 0


def _blob_download(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        path = c.download_blob(args.sha256, args.out)
    digest = args.sha256.removeprefix("blobs/")
    out.emit({"sha256": digest, "path": str(path), "size_bytes": path.stat().st_size})
    return 0
