"""Key layout and naming for the Redis backend. This module performs no I/O.

Every key lives under one namespace, by default derived from the API key (a hash,
never the key), so two accounts never share a budget by accident:

```
<ns>:cw:open          zset  creation places taken, not yet answered (score: lease end)
<ns>:cw:ends          zset  creation places answered (score: when they free up)
<ns>:cw:state         hash  not_before (a 429's hold), probing ("0"/"1")
<ns>:budget:pause     str   every request waits until this expires (a shared 429/455 pause)
<ns>:budget:rate      str   a shared cap (requests/s) after a 429, expiring after 60 s of peace
<ns>:budget:sends     zset  requests sent under that cap in the last second
<ns>:cb               chan  callbacks and poll results, published as JSON
<ns>:cb:<task id>     list  recent callbacks of one task, for late subscribers (bounded, expiring)
<ns>:poll:<task id>   str   the poll lease: which client polls this task now
<ns>:key:<submit key> list  task ids keyed callbacks named for one submit (recover())
<ns>:journal:<name>:… shared batch journals (see _redis/journal.py)
```
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit, urlunsplit

PREFIX = "kiemashup"


def namespace_for(api_key: str) -> str:
    """``kiemashup:<first 16 hex digits of sha256(api_key)>``: per account, never the key."""
    return f"{PREFIX}:{hashlib.sha256(api_key.encode()).hexdigest()[:16]}"


def redact(url: str) -> str:
    """``url`` without its password (user names stay): safe for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class Keys:
    """The names of every key under one namespace."""

    __slots__ = ("budget_pause", "budget_rate", "budget_sends", "channel", "creation", "ns")

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.creation = (f"{ns}:cw:open", f"{ns}:cw:ends", f"{ns}:cw:state")
        self.budget_pause = f"{ns}:budget:pause"
        self.budget_rate = f"{ns}:budget:rate"
        self.budget_sends = f"{ns}:budget:sends"
        self.channel = f"{ns}:cb"

    def kept(self, task_id: str) -> str:
        """The list of recent callbacks of ``task_id``."""
        return f"{self.channel}:{task_id}"

    def poll_lease(self, task_id: str) -> str:
        """Who polls ``task_id`` for everybody now."""
        return f"{self.ns}:poll:{task_id}"

    def claims(self, key: str) -> str:
        """Task ids that keyed callbacks named for the per-submit ``key``."""
        return f"{self.ns}:key:{key}"

    def journal(self, name: str) -> str:
        """The prefix of a shared journal's keys."""
        return f"{self.ns}:journal:{name}"
