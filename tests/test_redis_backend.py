"""kiemashup.redis: packaging, the backend's start, its namespace and its errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis.asyncio as aioredis
from redis_kit import RedisServer, free_port, redis_server

from kiemashup import BackendError, KieError, MashupClient
from kiemashup._redis.keys import Keys, namespace_for, redact
from kiemashup.redis import RedisBackend

__all__ = ["redis_server"]  # the fixture, imported for pytest

KEY = "sk-redis-test-0123456789"


def test_import_kiemashup_never_imports_redis() -> None:
    """``import kiemashup`` (the CLI, the testing kit) leaves redis unimported: an extra."""
    code = (
        "import kiemashup, kiemashup._cli, kiemashup.testing, sys; "
        "assert 'redis' not in sys.modules, 'redis'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_namespace_is_a_hash_of_the_api_key_never_the_key() -> None:
    """The default namespace is kiemashup:<16 hex of sha256(key)>; the key appears nowhere."""
    backend = RedisBackend("redis://127.0.0.1:1/0", api_key=KEY)
    assert backend.namespace == namespace_for(KEY)
    assert backend.namespace.startswith("kiemashup:")
    assert len(backend.namespace.split(":")[1]) == 16
    assert KEY not in backend.namespace
    assert KEY not in repr(backend)
    assert RedisBackend("redis://x/0", api_key="other").namespace != backend.namespace


def test_namespace_from_environment_or_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without api_key= the namespace comes from KIE_API_KEY; namespace= overrides both."""
    monkeypatch.setenv("KIE_API_KEY", KEY)
    assert RedisBackend("redis://x/0").namespace == namespace_for(KEY)
    assert RedisBackend("redis://x/0", namespace="team-a").namespace == "team-a"
    monkeypatch.delenv("KIE_API_KEY")
    with pytest.raises(KieError, match="API key"):
        RedisBackend("redis://x/0")


def test_key_layout_stays_under_the_namespace() -> None:
    """Every key the backend uses starts with its namespace."""
    keys = Keys("ns")
    names = [*keys.creation, keys.budget_pause, keys.channel, keys.kept("t1")]
    names += [keys.poll_lease("t1"), keys.journal("j"), keys.claims("k1")]
    assert all(name.startswith("ns:") for name in names)
    assert len(set(names)) == len(names)


def test_redact_drops_the_password_only() -> None:
    """A URL's password never reaches a message; host, port, user and db stay."""
    assert redact("redis://:s3cret@host:6380/2") == "redis://***@host:6380/2"
    assert redact("redis://bob:s3cret@host/0") == "redis://bob:***@host/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"


async def test_unreachable_redis_is_a_backend_error_naming_the_url() -> None:
    """Entering a backend whose Redis is down raises BackendError naming the URL, no password."""
    url = f"redis://:topsecret@127.0.0.1:{free_port()}/0"
    with pytest.raises(BackendError) as info:
        async with RedisBackend(url, api_key=KEY):
            pass
    assert info.value.url == f"redis://***@127.0.0.1:{url.rsplit(':', 1)[1]}"
    assert "topsecret" not in str(info.value)
    assert "127.0.0.1" in str(info.value)
    assert isinstance(info.value, KieError)


async def test_backend_from_url_and_from_an_existing_client(redis_server: RedisServer) -> None:
    """A URL makes (and closes) its own connection; a borrowed client is left open."""
    async with RedisBackend(redis_server.url, api_key=KEY) as backend:
        assert await backend.redis.ping()
    borrowed = aioredis.Redis.from_url(redis_server.url)
    async with RedisBackend(borrowed, api_key=KEY) as backend:
        assert backend.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert await borrowed.ping()  # still usable: not ours to close
    await borrowed.aclose()
    decoding = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(KieError, match="decode_responses"):
        RedisBackend(decoding, api_key=KEY)
    await decoding.aclose()


async def test_client_of_another_account_is_refused(redis_server: RedisServer) -> None:
    """A client whose API key is not the one the namespace was derived from is refused."""
    async with RedisBackend(redis_server.url, api_key=KEY) as backend:
        with pytest.raises(KieError, match="another API key"):
            MashupClient(api_key="someone-else", backend=backend)
        client = MashupClient(api_key=KEY, backend=backend)
        await client.aclose()
