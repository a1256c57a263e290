"""Redis URLs: which servers a URL names (one server, a Cluster, a Sentinel service), the
client that talks to them, and a one-line description of what was found there.

Forms (``rediss`` instead of ``redis``: TLS, to the sentinels too)::

    redis://[[user]:password@]host[:port][/db][?option=value…]      one server
    unix://[[user]:password@]/path/to/socket[?db=N]                  one server, local socket
    redis+cluster://[[user]:password@]host:port[,host:port…]         Redis Cluster
    redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db]   Sentinel

The user and password are the data servers' (for Sentinel: the master's and replicas');
sentinels with a password of their own take ``?sentinel_password=…`` (and
``sentinel_username``). Query options are redis-py's connection options (``socket_timeout``,
``ssl_cert_reqs``, ``ssl_ca_certs``, …); an unknown one is an error, not silently dropped.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import anyio
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

__all__ = ["OwnedClient", "RedisTopology", "RedisUrlError", "describe_client", "parse_redis_url"]

Kind = Literal["standalone", "cluster", "sentinel"]

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("standalone", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_DEFAULT_PORT = {"standalone": 6379, "cluster": 6379, "sentinel": 26379}
# Options redis-py reads from a URL's query as text (the typed ones come from its parsers).
_TEXT_OPTIONS = frozenset(
    {
        "client_name",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_ciphers",
        "ssl_password",
    }
)
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})
_CLUSTER_OPTIONS = frozenset(inspect.signature(RedisCluster.__init__).parameters)
_SENTINEL_TIMEOUT = 5.0  # seconds: a sentinel's answers are short; longer means it is gone
_DESCRIBE_WITHIN = 5.0  # seconds: a start-up line must not wait long for an absent server


class RedisUrlError(ValueError):
    """A Redis URL unbroken cannot use; the message says what is wrong (never the password)."""


@dataclass(frozen=True, slots=True)
class RedisTopology:
    """What a Redis URL names: the kind of deployment, its addresses and how to connect."""

    kind: Kind
    url: str = field(repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    tls: bool = False
    service: str | None = None
    db: int = 0
    #: redis-py connection options from the URL (password included: keep out of logs).
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    sentinel_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        """The URL's meaning in words, without the password (before connecting)."""
        tls = " over TLS" if self.tls else ""
        addresses = ", ".join(_address(host, port) for host, port in self.nodes)
        if self.kind == "cluster":
            return f"redis cluster via {addresses}{tls}"
        if self.kind == "sentinel":
            return f"redis sentinel service {self.service!r} via {addresses} (db {self.db}){tls}"
        if not self.nodes:
            return f"redis at unix socket {self.options.get('path', '?')} (db {self.db})"
        return f"redis at {addresses} (db {self.db}){tls}"


def parse_redis_url(url: str) -> RedisTopology:
    """Check ``url`` and say what it names; raises `RedisUrlError` with a one-line reason."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise RedisUrlError(
            "a redis url starts with redis://, rediss://, unix://, redis+cluster:// or "
            f"redis+sentinel:// (or rediss+…), not {_masked_start(url)!r}"
        )
    kind, tls = _SCHEMES[scheme]
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise RedisUrlError(f"the redis url cannot be read: {exc}") from None
    if parts.fragment:
        raise RedisUrlError("a redis url has no #fragment")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if scheme == "unix":
        return _standalone(url, "unix", userinfo, hosts, parts.path, query)
    nodes = _nodes(hosts, _DEFAULT_PORT[kind])
    if kind == "standalone":
        if len(nodes) != 1:
            raise RedisUrlError(
                "redis:// names one server; for several use redis+cluster:// or "
                "redis+sentinel://host:port,host:port/service"
            )
        return _standalone(url, scheme, userinfo, hosts, parts.path, query, nodes)
    service, db = None, 0
    segments = [unquote(s) for s in parts.path.split("/")[1:] if s]
    if kind == "cluster":
        if segments not in ([], ["0"]):
            raise RedisUrlError("redis+cluster:// takes no path (a cluster has only db 0)")
    else:
        if not segments or len(segments) > 2:
            raise RedisUrlError(
                "redis+sentinel:// needs the service name: …host:port/<service>[/db]"
            )
        service = segments[0]
        db = _db(segments[1]) if len(segments) == 2 else 0
    sentinel_options = {key: query.pop(key) for key in _SENTINEL_OPTIONS & query.keys()}
    if sentinel_options and kind != "sentinel":
        raise RedisUrlError("sentinel_username / sentinel_password are for redis+sentinel:// only")
    options = _driver_options("rediss" if tls else "redis", userinfo, nodes[0], db, query)
    if kind == "cluster":
        unsupported = sorted(set(options) - _CLUSTER_OPTIONS)
        if unsupported:
            raise RedisUrlError(f"option {unsupported[0]!r} is not supported by redis+cluster://")
    return RedisTopology(
        kind,
        url,
        tuple(nodes),
        tls,
        service,
        db,
        options,
        {key.removeprefix("sentinel_"): value for key, value in sentinel_options.items()},
    )


def _standalone(
    url: str,
    scheme: str,
    userinfo: str,
    hosts: str,
    path: str,
    query: dict[str, str],
    nodes: list[tuple[str, int]] | None = None,
) -> RedisTopology:
    if scheme == "unix":
        if hosts or not path:
            raise RedisUrlError("unix:// takes a socket path: unix:///path/to/redis.sock")
        db = _db(query.get("db", "0"))
    else:
        segments = [s for s in path.split("/") if s]
        if len(segments) > 1:
            raise RedisUrlError(f"the path of a redis url is the db number, not {path!r}")
        db = _db(query.get("db", segments[0] if segments else "0"))
    _check_query(query)
    options = dict(parse_url(url))  # the driver's own reading, now that every part is checked
    tls = scheme == "rediss"
    return RedisTopology("standalone", url, tuple(nodes or ()), tls, None, db, options)


def _driver_options(
    scheme: str, userinfo: str, node: tuple[str, int], db: int, query: dict[str, str]
) -> dict[str, Any]:
    """redis-py's connection options for a Cluster's or Sentinel's data servers."""
    _check_query(query)
    host, port = node
    netloc = f"{userinfo}@{quote(host)}:{port}" if userinfo else f"{quote(host)}:{port}"
    options: dict[str, Any] = dict(parse_url(f"{scheme}://{netloc}/{db}?{_query(query)}"))
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return options


def _check_query(query: Mapping[str, str]) -> None:
    for name, value in query.items():
        if name not in URL_QUERY_ARGUMENT_PARSERS and name not in _TEXT_OPTIONS:
            raise RedisUrlError(f"unknown option {name!r} in the redis url")
        parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
        if parser is not None:
            try:
                parser(value)
            except (TypeError, ValueError):
                raise RedisUrlError(f"option {name!r} in the redis url: bad value") from None


def _query(query: Mapping[str, str]) -> str:
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())


def _nodes(hosts: str, default_port: int) -> list[tuple[str, int]]:
    nodes = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            raise RedisUrlError("the redis url has an empty host (hosts are host:port,host:port)")
        if item.startswith("["):  # [ipv6]:port
            host, bracket, port_text = item[1:].partition("]")
            if not bracket or (port_text and not port_text.startswith(":")):
                raise RedisUrlError(f"host {item!r} in the redis url is not [address]:port")
            port_text = port_text[1:]
        else:
            host, _, port_text = item.partition(":")
        nodes.append((unquote(host), _port(port_text, default_port, item)))
    return nodes


def _port(text: str, default: int, item: str) -> int:
    if not text:
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise RedisUrlError(f"host {item!r} in the redis url has no valid port")
    return int(text)


def _db(text: str) -> int:
    if not text.isdigit():
        raise RedisUrlError(f"the db in a redis url is a number, not {text!r}")
    return int(text)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _masked_start(url: str) -> str:
    """The URL's beginning, cut before any credentials."""
    return url.partition("@")[0].partition("://")[0][:40] + ("://…" if "://" in url else "")


class OwnedClient:
    """The client for a `RedisTopology`, and everything to close with it (a Sentinel set's
    own connections to the sentinels)."""

    def __init__(self, topology: RedisTopology, *, cluster: bool, **options: Any) -> None:
        self.topology = topology
        self.sentinel: Sentinel | None = None
        self.client: Redis | RedisCluster
        if topology.kind == "sentinel":
            if cluster:
                raise RedisUrlError("a redis+sentinel:// url cannot be used with cluster=True")
            self.sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
                list(topology.nodes),
                sentinel_kwargs={
                    "socket_connect_timeout": _SENTINEL_TIMEOUT,
                    "socket_timeout": _SENTINEL_TIMEOUT,
                    **({"ssl": True} if topology.tls else {}),
                    **topology.sentinel_options,
                },
            )
            assert topology.service is not None
            self.client = self.sentinel.master_for(
                topology.service, **{**options, **topology.options}
            )
        elif topology.kind == "cluster" or cluster:
            if topology.kind == "cluster":
                nodes = [ClusterNode(host, port) for host, port in topology.nodes]
                self.client = RedisCluster(
                    startup_nodes=nodes, **{**_cluster_options(options), **topology.options}
                )
            else:
                self.client = RedisCluster.from_url(topology.url, **_cluster_options(options))
        else:
            self.client = Redis.from_url(topology.url, **options)

    async def aclose(self) -> None:
        """Close the client and the connections to the sentinels."""
        try:
            await self.client.aclose()
        finally:
            for sentinel in self.sentinel.sentinels if self.sentinel is not None else ():
                await sentinel.aclose()


def _cluster_options(options: Mapping[str, Any]) -> dict[str, Any]:
    # redis-py's own cluster retries follow MOVED/ASK and failovers: keep them.
    return {key: value for key, value in options.items() if key == "socket_connect_timeout"}


async def describe_client(client: Redis | RedisCluster) -> str:
    """What the client finds now: a standalone server, a cluster with N masters, or a
    Sentinel service and its current master. Never raises: an unreachable deployment is
    described as such (the service starts anyway and writes once it is back)."""
    try:
        with anyio.fail_after(_DESCRIBE_WITHIN):
            return await _found(client)
    except TimeoutError:
        problem = f"no answer within {_DESCRIBE_WITHIN:g} s"
    except (redis_errors.RedisError, OSError) as exc:
        problem = str(exc) or type(exc).__name__
    return f"{_configured(client)} (not reachable now: {problem})"


async def _found(client: Redis | RedisCluster) -> str:
    if isinstance(client, RedisCluster):
        await client.initialize()
        return f"redis cluster with {len(client.get_primaries())} masters"
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        host, port = await pool.get_master_address()  # type: ignore[no-untyped-call]
        return f"redis sentinel service {pool.service_name!r} at master {_address(host, port)}"
    info = await client.info("server")
    version = info.get("valkey_version") or info.get("redis_version", "?")
    return f"standalone {_configured(client)} (version {version})"


def _configured(client: Redis | RedisCluster) -> str:
    if isinstance(client, RedisCluster):
        return "redis cluster"
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        return f"redis sentinel service {pool.service_name!r}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"redis at unix socket {kwargs['path']}"
    return f"redis at {_address(kwargs.get('host', 'localhost'), kwargs.get('port', 6379))}"
