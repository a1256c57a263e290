"""The ``unbroken`` command.

::

    unbroken chat [--host 127.0.0.1] [--port 8000] [--workers N]   run the chat service
    unbroken db upgrade                                           migrate the chat database
    unbroken db current                                           print its schema revision
    unbroken users create-key [--name NAME] [--user-id ID]        make an API key
    unbroken users list-keys [--user-id ID]                       list the API keys
    unbroken users revoke-key KEY_ID                              delete one
    unbroken users prune-guests --idle-days N [--dry-run]         delete idle guests

Configuration comes from the environment (see `unbroken.chat.settings`); ``REDIS_URL`` may
name one server (``redis://``, ``rediss://``), a Redis Cluster
(``redis+cluster://host:port,host:port``) or a Sentinel service
(``redis+sentinel://host:port,host:port/<service>[/db]``). The chat service
needs the ``chat`` extra (``pip install 'unbroken[chat]'``); without it these commands say so
instead of failing with an import error.

``unbroken chat`` serves `serving_app` in every worker: the app of the environment's settings,
with the garbage collector tuned for a long-running server (`tuned_for_serving`). That tuning
is a decision for the whole process, so the command that owns the process makes it; an
application embedding the chat service decides for itself.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import math
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from unbroken import __version__
from unbroken.exceptions import MissingDependencyError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from unbroken.chat.settings import Settings
    from unbroken.chat.store import Store

__all__ = [
    "FULL_COLLECTION_EVERY",
    "freeze_startup_heap",
    "main",
    "serving_app",
    "tuned_for_serving",
]

#: A young collection once this many more container objects are alive than at the last one
#: (Python's default: 700). See `freeze_startup_heap`.
YOUNG_COLLECTION_AFTER = 10_000
#: A full collection at most once per this many second-generation ones (Python's default:
#: 10). See `freeze_startup_heap`.
FULL_COLLECTION_EVERY = 100
_PRUNE_BATCH = 500  # guests deleted per transaction by `unbroken users prune-guests`
_heap_frozen = False


def freeze_startup_heap() -> None:
    """Once per process, once the app has started: move everything allocated so far (the
    modules and objects of FastAPI, SQLAlchemy, pydantic, ...: most of the heap) out of the
    garbage collector's reach. They live as long as the process anyway, and otherwise every
    full collection scans them all, pausing every stream in the process while it does.

    Then make collections rarer: full ones (`FULL_COLLECTION_EVERY`) and young ones
    (`YOUNG_COLLECTION_AFTER`). Each live answer holds many tracked objects (its tasks,
    coroutines, cancel scopes, the request's middleware stack), so a full collection takes
    longer the more answers are running, and pauses all of them; at Python's default pace
    such pauses set the tail of the delivery delay. A busy server also allocates many
    short-lived objects at once (a gathered write of every stream's chunks, a burst of
    requests): at the default young threshold most collections find them all still in use,
    scan them for nothing and promote them, which brings the next full collection closer.
    The cyclic garbage of finished answers waits longer to be freed: memory for steadier
    delivery and less CPU, bounded by that pace.
    """
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()
        _, middle, _ = gc.get_threshold()
        gc.set_threshold(YOUNG_COLLECTION_AFTER, middle, FULL_COLLECTION_EVERY)


def tuned_for_serving(app: FastAPI) -> FastAPI:
    """``app``, changed so that `freeze_startup_heap` runs once its lifespan has started it
    (everything long-lived is allocated by then), before it serves a request."""
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with started(asgi_app) as state:
            freeze_startup_heap()
            yield state

    app.router.lifespan_context = lifespan
    return app


def serving_app() -> FastAPI:
    """Factory for ``uvicorn --factory unbroken.cli:serving_app``, what ``unbroken chat``
    serves: `unbroken.chat.app.app_from_env`, `tuned_for_serving`."""
    from unbroken.chat.app import app_from_env

    return tuned_for_serving(app_from_env())


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"unbroken: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _settings() -> Settings:
    try:
        from unbroken.chat.settings import Settings, SettingsError
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        _fail(str(MissingDependencyError(exc.name or "sqlalchemy", "chat")))
    try:
        return Settings.from_env()
    except SettingsError as exc:
        _fail(str(exc))


def _require_chat_extra() -> None:
    for module in ("fastapi", "uvicorn", "sqlalchemy", "alembic", "openai", "itsdangerous"):
        try:
            __import__(module)
        except ImportError:
            _fail(str(MissingDependencyError(module, "chat")))


async def _prepare(settings: Settings) -> tuple[str | None, str | None]:
    """Migrate the database once, before any worker starts; returns (before, after)."""
    from unbroken.chat.store import Store
    from unbroken.chat.store.migrate import current_revision

    async with Store.from_url(settings.database_url) as store:
        before = await current_revision(store.engine)
        await store.upgrade()
        after = await current_revision(store.engine)
    return before, after


async def _found_streams(settings: Settings) -> str:
    """What ``REDIS_URL`` leads to now (a server, a cluster's masters, a Sentinel master)."""
    from unbroken.chat.app import found_backend, make_backend

    async with make_backend(settings) as backend:
        return await found_backend(backend) or "?"


def _cmd_chat(args: argparse.Namespace) -> int:
    _require_chat_extra()
    import uvicorn
    import uvicorn.config

    from unbroken.chat.app import describe_backend
    from unbroken.chat.settings import mask_url

    settings = _settings()
    if args.workers < 1:
        _fail("--workers must be at least 1")
    if args.workers > 1 and not settings.redis_url:
        _fail(
            "--workers > 1 needs REDIS_URL: with the in-memory stream backend each worker "
            "has its own streams, and a resume or a stop reaching another worker would fail"
        )
    try:
        asyncio.run(_prepare(settings))
    except Exception as exc:
        _fail(f"cannot prepare the database {mask_url(settings.database_url)}: {exc}", 1)
    model = settings.model
    if model == "demo":
        model = f"demo (offline, {settings.demo_tokens_per_second:g} tokens/s)"
    elif settings.openai_base_url:
        model = f"{model} at {settings.openai_base_url}"
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"unbroken chat {__version__} on http://{host}:{args.port}", flush=True)
    print(f"  store:   {mask_url(settings.database_url)}", flush=True)
    print(f"  streams: {describe_backend(settings)}", flush=True)
    if settings.redis_url:
        print(f"  found:   {asyncio.run(_found_streams(settings))}", flush=True)
    print(f"  model:   {model}", flush=True)
    print(f"  workers: {args.workers}", flush=True)
    # uvicorn's own logging, plus unbroken's loggers through the same handler and format.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["unbroken"] = {
        "handlers": ["default"],
        "level": "DEBUG" if args.log_level in ("debug", "trace") else "INFO",
        "propagate": False,
    }
    uvicorn.run(
        "unbroken.cli:serving_app",
        log_config=log_config,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        # Open answer streams must not hold a restart forever; generations themselves are
        # drained (and stored) by the engine in the lifespan shutdown.
        timeout_graceful_shutdown=5,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    _require_chat_extra()
    from unbroken.chat.settings import mask_url
    from unbroken.chat.store import Store
    from unbroken.chat.store.migrate import current_revision, head_revision

    settings = _settings()

    async def run() -> None:
        async with Store.from_url(settings.database_url) as store:
            if args.db_command == "upgrade":
                before = await current_revision(store.engine)
                await store.upgrade()
                after = await current_revision(store.engine)
                if before == after:
                    print(f"{mask_url(settings.database_url)}: already at {after}")
                else:
                    print(f"{mask_url(settings.database_url)}: upgraded {before} -> {after}")
            else:
                current = await current_revision(store.engine)
                head = head_revision()
                note = "up to date" if current == head else f"latest is {head}"
                print(f"{current or 'empty'} ({note})")

    try:
        asyncio.run(run())
    except Exception as exc:
        _fail(f"database {mask_url(settings.database_url)}: {exc}", 1)
    return 0


def _cmd_users(args: argparse.Namespace) -> int:
    _require_chat_extra()
    from unbroken.chat.store import Store

    settings = _settings()
    actions = {
        "create-key": _create_key,
        "list-keys": _list_keys,
        "revoke-key": _revoke_key,
        "prune-guests": _prune_guests,
    }

    async def run() -> int:
        async with Store.from_url(settings.database_url) as store:
            await store.upgrade()
            return await actions[args.users_command](store, args)

    return asyncio.run(run())


async def _create_key(store: Store, args: argparse.Namespace) -> int:
    if args.user_id:
        user = await store.get_user(args.user_id)
        if user is None:
            _fail(f"no user with id {args.user_id!r}")
    else:
        user = await store.create_user(kind="user", name=args.name)
    key, record = await store.create_api_key(user.id, name=args.name)
    print(f"user:    {user.id}", file=sys.stderr)
    print(
        f"key id:  {record.id} (to revoke it: unbroken users revoke-key {record.id})",
        file=sys.stderr,
    )
    print("api key (shown once; send it as 'Authorization: Bearer <key>'):", file=sys.stderr)
    print(key)
    return 0


async def _list_keys(store: Store, args: argparse.Namespace) -> int:
    keys = await store.list_api_keys(args.user_id)
    rows = [("KEY ID", "USER", "NAME", "CREATED", "LAST USED")]
    rows += [
        (
            key.id,
            key.user_id,
            key.name or "-",
            _moment(key.created_at),
            _moment(key.last_used_at) if key.last_used_at else "never",
        )
        for key in keys
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


async def _revoke_key(store: Store, args: argparse.Namespace) -> int:
    key = await store.delete_api_key(args.key_id)
    if key is None:
        _fail(f"no API key with id {args.key_id!r} (unbroken users list-keys lists them)", 1)
    label = f" ({key.name})" if key.name else ""
    print(f"revoked {key.id}{label} of user {key.user_id}: the next request with it gets 401")
    return 0


async def _prune_guests(store: Store, args: argparse.Namespace) -> int:
    from unbroken.chat.store import utcnow

    idle_since = utcnow() - timedelta(days=args.idle_days)
    idle = f"nothing stored for {args.idle_days:g} days"
    if args.dry_run:
        found = await store.count_idle_guests(idle_since=idle_since)
        print(f"{found} guests with {idle} (a dry run: nothing deleted)")
        return 0
    deleted = 0
    while batch := await store.idle_guests(idle_since=idle_since, limit=_PRUNE_BATCH):
        removed = await store.delete_idle_guests(batch, idle_since=idle_since)
        deleted += removed
        if not removed:  # every one of them wrote since it was listed: no longer idle
            break
    print(f"deleted {deleted} guests with {idle}, with their chats")
    return 0


def _moment(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _environment_help() -> str:
    """The chat service's environment variables (empty without the chat extra's modules)."""
    from unbroken.chat.environment import help_text

    return help_text()


def _positive_days(raw: str) -> float:
    try:
        days = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {raw!r}") from None
    if not (math.isfinite(days) and days > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of days: {raw!r}")
    return days


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unbroken", description="Resumable LLM answer streams: the reference chat service."
    )
    parser.add_argument("--version", action="version", version=f"unbroken {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    chat = commands.add_parser(
        "chat",
        help="run the reference chat service",
        description="Run the reference chat service.",
        epilog=_environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    chat.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    chat.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (needs REDIS_URL: redis://, redis+cluster:// or redis+sentinel://)",
    )
    chat.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
    )
    chat.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="proxies whose X-Forwarded-* headers are trusted (default: 127.0.0.1)",
    )
    chat.set_defaults(handler=_cmd_chat)

    db = commands.add_parser("db", help="manage the chat database (DATABASE_URL)")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_commands.required = True
    db_commands.add_parser("upgrade", help="apply all pending migrations")
    db_commands.add_parser("current", help="print the schema revision")
    db.set_defaults(handler=_cmd_db)

    users = commands.add_parser("users", help="manage users and API keys")
    user_commands = users.add_subparsers(dest="users_command", metavar="ACTION")
    user_commands.required = True
    create_key = user_commands.add_parser(
        "create-key", help="create an API key (and a user, unless --user-id is given)"
    )
    create_key.add_argument("--name", default=None, help="a label for the user and the key")
    create_key.add_argument("--user-id", default=None, help="add the key to this user")
    list_keys = user_commands.add_parser(
        "list-keys", help="list the API keys (their ids, users, names, last use; never the keys)"
    )
    list_keys.add_argument("--user-id", default=None, help="only this user's keys")
    revoke_key = user_commands.add_parser(
        "revoke-key", help="delete an API key: the next request with it is refused"
    )
    revoke_key.add_argument("key_id", metavar="KEY_ID", help="the key's id (see list-keys)")
    prune = user_commands.add_parser(
        "prune-guests",
        help="delete browser guests who stored nothing for a while, with their chats",
    )
    prune.add_argument(
        "--idle-days",
        type=_positive_days,
        required=True,
        help="delete guests whose chats were all last updated longer ago than this",
    )
    prune.add_argument("--dry-run", action="store_true", help="count them, delete nothing")
    users.set_defaults(handler=_cmd_users)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
