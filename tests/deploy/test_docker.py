"""Every image the manifests and the webhook name has a container file, and the container
files copy paths that exist and run commands the CLI has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.deploy.conftest import DEPLOY, ROOT, load_yaml

DOCKER = DEPLOY / "docker"


def _dockerfile(image: str) -> Path:
    """``modelplane/NAME[:TAG]`` is built by ``deploy/docker/NAME.Dockerfile``."""
    name = image.split("@")[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    return DOCKER / f"{name.removeprefix('modelplane/')}.Dockerfile"


def _images(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and (key == "image" or key.endswith("_IMAGE")):
                found.add(item)
            else:
                found |= _images(item)
    elif isinstance(value, list):
        for item in value:
            found |= _images(item)
    return found


def test_every_modelplane_image_has_a_dockerfile(rendered: dict[str, Any]) -> None:
    from controlplane.injector import InjectorSettings

    images: set[str] = set()
    for resources in rendered.values():
        images |= _images(resources)
    for path in (DEPLOY / "examples").glob("*.yaml"):
        images |= _images(load_yaml(path))
    fields = InjectorSettings.model_fields
    images |= {fields["sidecar_image"].default, fields["sidecar_gpu_image"].default}
    ours = {i for i in images if i.startswith("modelplane/")}
    assert ours >= {
        "modelplane/controlplane:0.1.0",
        "modelplane/sidecar:0.1.0",
        "modelplane/sidecar-gpu:0.1.0",
    }
    for image in ours:
        assert _dockerfile(image).exists(), f"{image} has no {_dockerfile(image)}"


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfiles_copy_real_paths_and_run_real_commands() -> None:
    import json

    from modelplane.cli import build_parser

    parser = build_parser()
    files = sorted(DOCKER.glob("*.Dockerfile"))
    assert {p.name for p in files} == {
        "controlplane.Dockerfile",
        "sidecar.Dockerfile",
        "sidecar-gpu.Dockerfile",
    }
    for path in files:
        steps = _instructions(path)
        bases = [rest.split()[0] for word, rest in steps if word == "FROM"]
        assert bases, path
        for word, rest in steps:
            if word == "COPY" and not rest.startswith("--from"):
                *sources, _ = rest.split()
                for source in sources:
                    assert (ROOT / source).exists(), f"{path.name}: COPY {source}"
        entry = json.loads(next(rest for word, rest in steps if word == "ENTRYPOINT"))
        cmd = json.loads(next(rest for word, rest in steps if word == "CMD"))
        assert entry == ["modelplane"]
        assert callable(parser.parse_args(cmd).handler)
        assert any(word == "USER" and rest.startswith("10001") for word, rest in steps)
        extra = "controlplane" if path.name.startswith("controlplane") else "sidecar"
        assert f'".[{extra}]"' in path.read_text()
    gpu = _instructions(DOCKER / "sidecar-gpu.Dockerfile")
    for word, rest in gpu:
        if word == "FROM":
            assert re.match(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-", rest), rest
    cpu = _instructions(DOCKER / "sidecar.Dockerfile")
    assert all("slim" in rest for word, rest in cpu if word == "FROM")
