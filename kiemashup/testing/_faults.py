"""Faults the fake server can inject, and the queue that hands them out.

This module performs no I/O.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

__all__ = ["ENDPOINTS", "FAULT_KINDS", "Fault", "FaultQueue"]

#: Endpoint names a fault (and ``FakeKieServer.count``) can refer to.
#: "upload" is any of the three upload endpoints; "file" serves the uploaded files.
ENDPOINTS: tuple[str, ...] = (
    "submit",
    "record-info",
    "credits",
    "audio",
    "upload",
    "file",
    "download-url",
)

FAULT_KINDS: tuple[str, ...] = (
    "http_500",
    "http_503",
    "body_code",
    "rate_limit",
    "maintenance",
    "slow",
    "drop_after_create",
    "reset",
    "invalid_json",
    "reset_mid_body",
    "drip",
    # Reliability soak (tests/test_soak.py): a normal reply whose ``data`` lost,
    # renamed and gained fields, as a changed or lagging API might send.
    "mangle",
)


@dataclass(frozen=True)
class Fault:
    """A misbehaviour for the next ``times`` requests to ``endpoint`` (``"*"`` = any).

    Kinds: ``http_500``/``http_503`` (that HTTP status, envelope code 500/503),
    ``body_code`` (HTTP 200, envelope ``code``), ``rate_limit`` (HTTP 429, body
    code 429, ``Retry-After: retry_after`` if given), ``maintenance`` (HTTP 200,
    body code 455), ``slow`` (sleep ``delay`` seconds, then answer normally),
    ``drop_after_create`` (submit only: create the task, then close the
    connection without a reply), ``reset`` (close the connection without a reply
    or any work), ``invalid_json`` (HTTP 200 with a truncated JSON body).

    Faulted requests are recorded and counted but do no work (``slow`` and
    ``drop_after_create`` excepted). Two kinds misbehave *while* sending a normal
    reply (meant for "audio", "file" and "upload"): ``reset_mid_body`` (headers
    and half the body, then the connection is aborted) and ``drip`` (the body in
    8 pieces, ``delay`` seconds apart). ``mangle`` does the work and answers
    normally, but with fields of ``data`` dropped, renamed and added (see
    ``_replies.mangle``; meant for "record-info"). Note that aiohttp's client silently retries
    an idempotent request (GET) once after a server disconnect, so a ``reset``
    on a GET endpoint needs ``times=2`` for the client to see the error.
    """

    endpoint: str
    kind: str
    _: KW_ONLY
    times: int = 1
    code: int | None = None
    retry_after: str | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.endpoint != "*" and self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be '*' or one of {ENDPOINTS}, got {self.endpoint!r}")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.times < 1:
            raise ValueError(f"times must be >= 1, got {self.times}")
        if self.kind == "body_code" and self.code is None:
            raise ValueError("a body_code fault needs code=")
        if self.kind == "drop_after_create" and self.endpoint != "submit":
            raise ValueError("drop_after_create only applies to endpoint 'submit'")
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")


@dataclass
class _Armed:
    fault: Fault
    left: int


class FaultQueue:
    """Injected faults, matched first-in first-out per endpoint, each used ``times`` times."""

    def __init__(self) -> None:
        self._armed: list[_Armed] = []

    def add(self, *faults: Fault) -> None:
        """Queue ``faults`` behind those already waiting."""
        self._armed.extend(_Armed(fault, fault.times) for fault in faults)

    def take(self, endpoint: str) -> Fault | None:
        """The oldest fault matching ``endpoint``, using up one of its hits."""
        for armed in self._armed:
            if armed.fault.endpoint in ("*", endpoint):
                armed.left -= 1
                if armed.left == 0:
                    self._armed.remove(armed)
                return armed.fault
        return None

    def __len__(self) -> int:
        return len(self._armed)
