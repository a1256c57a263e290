"""REDIS_URL forms: what each names, the clear error a wrong one gives at start (library,
chat settings, CLI), and what the backend finds behind each on real servers: one server,
a 3-master cluster, a Sentinel service."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests._services import free_port
from tests.faults._servers import cluster_with_replicas, sentinel_set
from unbroken import StreamEngine
from unbroken.backends.redis import RedisBackend
from unbroken.backends.redis._url import RedisUrlError, parse_redis_url
from unbroken.chat.app import describe_backend
from unbroken.chat.settings import Settings, SettingsError
from unbroken.cli import main
from unbroken.compat import create_resumable_stream_context

SECRET = "s3cr%40t-pw"  # percent-encoded "s3cr@t-pw"


@pytest.mark.parametrize(
    ("url", "kind", "nodes", "tls", "service", "db"),
    [
        ("redis://localhost", "standalone", [("localhost", 6379)], False, None, 0),
        (
            "rediss://:pw@cache.example:6380/3",
            "standalone",
            [("cache.example", 6380)],
            True,
            None,
            3,
        ),
        ("redis://[::1]:7000/1", "standalone", [("::1", 7000)], False, None, 1),
        ("unix:///run/redis.sock?db=2", "standalone", [], False, None, 2),
        ("redis+cluster://a:7000,b:7001", "cluster", [("a", 7000), ("b", 7001)], False, None, 0),
        ("rediss+cluster://u:pw@a:7000/0", "cluster", [("a", 7000)], True, None, 0),
        (
            "redis+sentinel://s1:26379,s2,[::1]:5000/mymaster/4",
            "sentinel",
            [("s1", 26379), ("s2", 26379), ("::1", 5000)],
            False,
            "mymaster",
            4,
        ),
        ("rediss+sentinel://:pw@s1:1/svc", "sentinel", [("s1", 1)], True, "svc", 0),
    ],
)
def test_url_forms(
    url: str, kind: str, nodes: list[tuple[str, int]], tls: bool, service: str | None, db: int
) -> None:
    found = parse_redis_url(url)
    assert (found.kind, list(found.nodes), found.tls, found.service, found.db) == (
        kind,
        nodes,
        tls,
        service,
        db,
    )
    assert "pw" not in found.describe() and "pw" not in repr(found)


def test_credentials_and_options_reach_the_driver() -> None:
    found = parse_redis_url(
        f"rediss+sentinel://app:{SECRET}@s1:26379/svc/2?socket_timeout=1.5"
        "&sentinel_password=other&ssl_cert_reqs=none"
    )
    assert found.options["username"] == "app" and found.options["password"] == "s3cr@t-pw"
    assert found.options["socket_timeout"] == 1.5 and found.options["ssl"] is True
    assert found.options["ssl_cert_reqs"] == "none" and found.options["db"] == 2
    assert dict(found.sentinel_options) == {"password": "other"}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://localhost:6379", "starts with redis://"),
        ("localhost:6379", "starts with redis://"),
        ("redis://host:port", "no valid port"),
        ("redis://host:70000", "no valid port"),
        ("redis://host/zero", "db in a redis url is a number"),
        ("redis://host/0/1", "the path of a redis url is the db number"),
        ("redis://a:1,b:2", "names one server"),
        ("redis://host?nonsense=1", "unknown option 'nonsense'"),
        ("redis://host?socket_timeout=soon", "option 'socket_timeout'"),
        ("redis+cluster://a:1,,b:2", "empty host"),
        ("redis+cluster://a:1/2", "only db 0"),
        ("redis+cluster://a:1?sentinel_password=x", "for redis+sentinel:// only"),
        ("redis+sentinel://s1:26379", "needs the service name"),
        ("redis+sentinel://s1:26379/svc/db", "db in a redis url is a number"),
        ("redis+sentinel://[::1/svc", "cannot be read"),
        ("unix://host/sock", "unix:// takes a socket path"),
    ],
)
def test_a_wrong_url_says_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(RedisUrlError, match=None) as caught:
        parse_redis_url(url.replace("://", "://user:hunter2@", 1) if "://" in url else url)
    message = str(caught.value)
    assert says in message, message
    assert "hunter2" not in message and "\n" not in message


def test_the_backend_refuses_a_wrong_url_when_made() -> None:
    with pytest.raises(ValueError, match="needs the service name"):
        RedisBackend("redis+sentinel://127.0.0.1:26379")
    with pytest.raises(ValueError, match="cannot be used with cluster=True"):
        RedisBackend("redis+sentinel://127.0.0.1:26379/svc", cluster=True)
    assert RedisBackend("redis+cluster://127.0.0.1:7000").cluster


def test_chat_settings_name_redis_url() -> None:
    with pytest.raises(SettingsError, match=r"^REDIS_URL: .*needs the service name"):
        Settings.from_env({"REDIS_URL": "redis+sentinel://s1:26379"})
    settings = Settings.from_env({"REDIS_URL": f"redis+sentinel://:{SECRET}@s1,s2/svc"})
    banner = describe_backend(settings)
    assert (
        banner == "redis sentinel service 'svc' via s1:26379, s2:26379 (db 0) (prefix 'unbroken')"
    )


def test_the_cli_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+cluster://a:1,,b:2")
    with pytest.raises(SystemExit) as exited:
        main(["chat", "--port", str(free_port())])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("unbroken: error: REDIS_URL: ") and "empty host" in err


def test_compat_refuses_a_wrong_url() -> None:
    with pytest.raises(ValueError, match="unknown option"):
        create_resumable_stream_context(redis_url="redis://localhost?bogus=1")


# -- what the backend finds ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.redis
async def test_describes_a_standalone_server(redis_url: str) -> None:
    async with RedisBackend(redis_url) as backend:
        found = await backend.describe()
    assert found.startswith("standalone redis at ") and "(version " in found, found


@pytest.mark.anyio
async def test_describes_an_unreachable_server_without_failing() -> None:
    async with RedisBackend(f"redis://127.0.0.1:{free_port()}/0") as backend:
        found = await backend.describe()
    assert "not reachable now" in found, found


@pytest.fixture(scope="module")
def sentinels() -> Iterator[str]:
    with sentinel_set(replicas=1) as found:
        yield found.url


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_sentinel_url_finds_the_master_and_streams(sentinels: str) -> None:
    prefix = f"url-{uuid.uuid4().hex[:8]}"
    async with RedisBackend(sentinels, key_prefix=prefix) as backend:
        found = await backend.describe()
        assert found.startswith("redis sentinel service 'unbroken-primary' at master 127.0.0.1:")
        async with StreamEngine(backend) as engine:

            async def source():  # type: ignore[no-untyped-def]
                for word in ("one ", "two ", "three"):
                    yield word

            await engine.start("s", source())
            await engine.wait("s")
            texts = [c.data async for c in engine.read("s") if hasattr(c, "data")]
    assert "".join(texts) == "one two three"


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_cluster_url_counts_masters() -> None:
    with cluster_with_replicas(3) as cluster:
        async with RedisBackend(cluster.url, key_prefix="url") as backend:
            assert backend.cluster
            assert await backend.describe() == "redis cluster with 3 masters"
