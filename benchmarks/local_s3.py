"""A real S3-compatible server on the loopback address (moto's standalone server), for the streaming
tests and benchmark: started on a free 127.0.0.1 port, stopped after. Not a script.

    with local_s3_server() as server:          # server.endpoint: "http://127.0.0.1:PORT"; AWS_* set inside
        upload(folder, "s3://bucket/prefix")
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple
from unittest import mock

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server(NamedTuple):
    endpoint: str  # http://127.0.0.1:PORT
    pid: int  # the server's process (its CPU time is part of what loopback streaming costs)


class ServerUnavailable(RuntimeError):
    """The local S3 server could not be started (moto missing, or it did not answer)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


@contextlib.contextmanager
def local_s3_server(timeout: float = 30.0) -> Iterator[S3Server]:
    """moto's server on a free loopback port (its endpoint and pid), with AWS_ENDPOINT_URL and test
    credentials in os.environ (put back afterwards). ServerUnavailable if it cannot start."""
    try:
        import moto.server  # noqa: F401
    except ImportError as error:
        raise ServerUnavailable(f"moto[server] is not installed ({error})") from error
    port = _free_port()
    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: its request log would fill one and stall the server
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise ServerUnavailable(f"moto's server did not start on 127.0.0.1:{port}: {log.read()[-500:]}")
            time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        with mock.patch.dict(os.environ, {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}):
            yield S3Server(endpoint, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def upload(folder: Path, url: str) -> int:
    """Every file of `folder` to `s3://bucket/prefix/...` (the bucket made if missing); bytes sent."""
    import boto3

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client = boto3.client("s3")  # endpoint and credentials from the environment
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    sent = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}".lstrip("/"))
        sent += path.stat().st_size
    return sent
