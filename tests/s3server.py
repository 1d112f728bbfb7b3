"""A real S3 endpoint for tests: moto's server in a process of its own on a free loopback
port, reached through ``pyarrow.fs`` like any S3-compatible store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from modelplane.testing.processes import free_port

#: What a client of the test server needs in its environment: any credentials will do, and
#: no lookup of an instance's metadata service (which would wait for a timeout off EC2).
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "modelplane-test",
    "AWS_SECRET_ACCESS_KEY": "modelplane-test-secret",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class S3Server:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def query(self) -> str:
        return f"endpoint_override=127.0.0.1:{self.port}&scheme=http&region=us-east-1"

    def uri(self, bucket: str, prefix: str = "") -> str:
        path = f"{bucket}/{prefix}".rstrip("/")
        return f"s3://{path}?{self.query}"

    def fs(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=S3_ENV["AWS_ACCESS_KEY_ID"],
            secret_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )

    def new_bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:16]}"
        self.fs().create_dir(name)
        return name

    def objects(self, bucket: str) -> dict[str, int]:
        """Every object in ``bucket`` (directory markers left out): key -> size."""
        infos = self.fs().get_file_info(pafs.FileSelector(bucket, recursive=True))
        return {i.path: i.size for i in infos if i.type == pafs.FileType.File}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start_s3(port: int = 0) -> S3Server:
    """Start moto's S3 server (on ``port``, else a free one) and wait until it answers."""
    port = port or free_port()
    moto = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **S3_ENV},
    )
    server = S3Server(port, process)
    deadline = time.monotonic() + 60
    while True:
        try:
            server.fs().get_file_info(pafs.FileSelector("", recursive=False))
            return server
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto's S3 server did not start on port {port}") from None
            time.sleep(0.1)
