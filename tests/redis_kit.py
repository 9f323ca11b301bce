"""A real redis-server for tests/test_redis*.py: spawned on a free loopback port, removed after.

In CI (``CI`` set) a missing binary fails the run: ``.ci/run`` installs it, and a test
that skips there would prove nothing. Elsewhere (a newcomer's machine running the
README's test command) these tests are skipped, each saying how to install it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process: no persistence, its data dir removed on ``stop``."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            why = (
                "redis-server is not installed: `apt-get install redis-server` "
                "(.ci/run does it); the Redis backend's tests need a real server"
            )
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="kiemashup-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited at start (code {self.proc.returncode})")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        pytest.fail("redis-server did not answer PING within 10 s")

    def kill(self) -> None:
        """Stop the server (it can be started again on the same port)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A started redis-server on a free loopback port; killed and its dir removed after."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
