"""``modelplane versions`` commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelplane._code import GitLineage, git_lineage
from modelplane.cli._checks import (
    add_label_replacement,
    printable,
    replaced_labels,
    unique_key_values,
    without_credentials,
)
from modelplane.cli._common import (
    VERSION_OR_ALIAS_HELP,
    add_request_id,
    client,
    csv_list,
    key_floats,
    numbered_version,
    page_size,
    server_errors,
)
from modelplane.cli._output import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Printer,
    to_dict,
)
from modelplane.cli._pages import note_next_page
from modelplane.v1 import registry_pb2


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``versions`` commands."""
    p = sub.add_parser("versions", help="register and manage model versions")
    s = p.add_subparsers(dest="versions_command", metavar="ACTION", required=True)

    r = s.add_parser("register", help="upload an ONNX model and register it with lineage")
    r.add_argument("name", help="model id")
    r.add_argument("--onnx", required=True, type=Path, help="the ONNX file")
    r.add_argument(
        "--dataset",
        action="append",
        metavar="ROLE=FILE",
        help="a dataset (Parquet, Arrow or CSV) by role, e.g. train=train.parquet (repeatable, "
        "each role once); the train dataset gives the baseline profile",
    )
    r.add_argument("--label", default="", help="label column of the datasets (not a feature)")
    r.add_argument("--feature-names", help="comma-separated feature names in model-input order")
    r.add_argument(
        "--param",
        action="append",
        metavar="K=V",
        help="a training parameter (repeatable, each key once)",
    )
    r.add_argument(
        "--metric",
        action="append",
        metavar="K=V",
        help="a training metric (repeatable, each key once)",
    )
    r.add_argument(
        "--code-commit",
        help="source commit (default: HEAD of the git repo here, if any, with -dirty appended "
        "when tracked files were changed; a warning when git refuses the repository)",
    )
    r.add_argument(
        "--code-repo",
        help="source repository URL (default: the git remote here, if any); credentials in "
        "the URL are not recorded: a password always goes, and the user name too unless the "
        "URL is ssh:// (https://TOKEN@host/... is a token)",
    )
    r.add_argument("--training-run-id", default="")
    r.add_argument("--description", default="")
    r.add_argument(
        "--set-label",
        action="append",
        metavar="KEY=VALUE",
        help="a version label (repeatable, each key once)",
    )
    r.add_argument("--no-environment", action="store_true", help="do not record installed packages")
    add_request_id(r)
    r.set_defaults(handler=_register)

    g = s.add_parser("get", help="show a version")
    g.add_argument("name")
    g.add_argument("version", help="version number or @ALIAS")
    g.set_defaults(handler=_get)

    ls = s.add_parser("list", help="list a model's versions")
    ls.add_argument("name")
    ls.add_argument("--filter", default="", help="e.g. 'state=ARCHIVED labels.stage=beta'")
    ls.add_argument("--order-by", default="", help="'version' or 'version desc' (default)")
    ls.add_argument("--page-size", type=page_size, default=0)
    ls.add_argument("--page-token", default="")
    ls.set_defaults(handler=_list)

    u = s.add_parser("update", help="update a version's description or labels")
    u.add_argument("name")
    u.add_argument("version", help=VERSION_OR_ALIAS_HELP)
    u.add_argument("--description")
    add_label_replacement(u, "--set-label")
    u.add_argument("--etag", default="", help="fail with ABORTED unless the version still has it")
    add_request_id(u)
    u.set_defaults(handler=_update)

    a = s.add_parser("archive", help="archive a version")
    a.add_argument("name")
    a.add_argument("version", help=VERSION_OR_ALIAS_HELP)
    a.add_argument("--etag", default="")
    add_request_id(a)
    a.set_defaults(handler=_archive)

    d = s.add_parser("download", help="download a version's ONNX file")
    d.add_argument("name")
    d.add_argument("version", help="version number or @ALIAS")
    d.add_argument("--out", required=True, type=Path)
    d.set_defaults(handler=_download)

    vf = s.add_parser(
        "verify", help="check every approval signature and evaluation digest (exit 1 on failure)"
    )
    vf.add_argument("name")
    vf.add_argument("version", help=VERSION_OR_ALIAS_HELP)
    vf.set_defaults(handler=_verify)


COLUMNS = ["name", "state", "aliases", "artifact.sha256", "inputs", "created_by", "create_time"]


def _row(v: registry_pb2.ModelVersion) -> list[object]:
    inputs = "; ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in v.signature.inputs)
    state = registry_pb2.VersionState.Name(v.state).removeprefix("VERSION_STATE_")
    return [
        v.name,
        state,
        ",".join(v.aliases),
        v.artifact.sha256[:16],
        inputs,
        v.created_by,
        v.create_time.ToJsonString(),
    ]


def _register(args: argparse.Namespace, out: Printer) -> int:
    if not args.onnx.is_file():
        raise CliError(f"--onnx {args.onnx}: no such file", EXIT_USAGE)
    datasets = unique_key_values(args.dataset, "--dataset")
    for role, path in datasets.items():
        if not Path(path).is_file():
            raise CliError(f"--dataset {role}={printable(path)}: no such file", EXIT_USAGE)
    params = unique_key_values(args.param, "--param")
    unique_key_values(args.metric, "--metric")
    metrics = key_floats(args.metric, "--metric")
    labels = unique_key_values(args.set_label, "--set-label")
    found = GitLineage()
    if args.code_commit is None or args.code_repo is None:
        found = git_lineage()
        if found.problem:
            out.progress(
                "warning: no code commit or repository recorded from git (give --code-commit "
                f"and --code-repo to record them): {found.problem}"
            )
        elif found.unsure and args.code_commit is None:
            out.progress(
                f"warning: commit {found.commit} recorded without knowing whether tracked "
                f"files were changed since (give --code-commit to say): {found.unsure}"
            )
    commit = args.code_commit if args.code_commit is not None else found.commit
    repo = without_credentials(args.code_repo if args.code_repo is not None else found.repository)
    with server_errors(), client(args) as c:
        out.progress(f"uploading {args.onnx} and {len(datasets)} dataset(s)")
        v = c.register_version(
            args.name,
            args.onnx,
            datasets=datasets,
            label=args.label,
            feature_names=csv_list(args.feature_names),
            params=params,
            metrics=metrics,
            code_repo=repo,
            code_commit=commit,
            training_run_id=args.training_run_id,
            description=args.description,
            labels=labels,
            capture_env=not args.no_environment,
            request_id=args.request_id or None,
        )
    out.emit(v, columns=COLUMNS, rows=[_row(v)])
    return 0


def _get(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        v = c.get_version(args.name, args.version)
    out.emit(v, columns=COLUMNS, rows=[_row(v)])
    return 0


def _list(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        if args.page_size or args.page_token:
            page = c.list_versions_page(
                args.name,
                filter=args.filter,
                order_by=args.order_by,
                page_size=args.page_size,
                page_token=args.page_token,
            )
            versions, token = list(page.versions), page.next_page_token
        else:
            versions, token = (
                list(c.list_versions(args.name, filter=args.filter, order_by=args.order_by)),
                "",
            )
    out.emit(
        {"versions": [to_dict(v) for v in versions], "next_page_token": token},
        columns=COLUMNS,
        rows=[_row(v) for v in versions],
    )
    note_next_page(out, token)
    return 0


def _update(args: argparse.Namespace, out: Printer) -> int:
    fields: dict[str, Any] = {}
    if args.description is not None:
        fields["description"] = args.description
    labels = replaced_labels(args.set_label, args.clear_labels, "--set-label")
    if labels is not None:
        fields["labels"] = labels
    if not fields:
        raise CliError(
            "name something to change: --description, --set-label or --clear-labels", EXIT_USAGE
        )
    with server_errors(), client(args) as c:
        v = c.update_version(
            args.name,
            numbered_version(c, args.name, args.version, out),
            etag=args.etag,
            request_id=args.request_id or None,
            **fields,
        )
    out.emit(v, columns=COLUMNS, rows=[_row(v)])
    return 0


def _archive(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        v = c.archive_version(
            args.name,
            numbered_version(c, args.name, args.version, out),
            etag=args.etag,
            request_id=args.request_id or None,
        )
    out.emit(v, columns=COLUMNS, rows=[_row(v)])
    return 0


def _download(args: argparse.Namespace, out: Printer) -> int:
    if args.out.is_dir():  # else the error would name the temporary file written beside it
        raise CliError(f"--out {args.out} is a directory: name the file to write", EXIT_USAGE)
    with server_errors(), client(args) as c:
        v = c.get_version(args.name, args.version)
        path = c.download_blob(v.artifact.sha256, args.out)
    out.emit(
        {
            "version": v.name,
            "sha256": v.artifact.sha256,
            "path": str(path),
            "size_bytes": path.stat().st_size,
        }
    )
    return 0


def _verify(args: argparse.Namespace, out: Printer) -> int:
    with server_errors(), client(args) as c:
        result = c.verify_version(args.name, numbered_version(c, args.name, args.version, out))
    out.emit(
        to_dict(result),
        columns=["resource", "ok", "message"],
        rows=[[ch.resource, "ok" if ch.ok else "FAILED", ch.message] for ch in result.checks],
        title="all signatures valid" if result.ok else "verification FAILED",
    )
    return EXIT_OK if result.ok else EXIT_CHECK_FAILED
