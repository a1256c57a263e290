"""Every environment variable the chat service reads, with its default and meaning.

The one list behind ``unbroken chat --help``; the README's table says the same in more
words, and a test checks both against what `Settings.from_env` actually reads.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

__all__ = ["VARIABLES", "Variable", "help_text"]


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: the `Settings` field it sets, a sample value, its default
    and what it does."""

    name: str
    field: str
    example: str
    default: str
    meaning: str


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "DATABASE_URL",
        "database_url",
        "postgresql://user:password@db/chat",
        "SQLite file ./unbroken.sqlite3",
        "where chats are stored: sqlite+aiosqlite:///path or postgresql+asyncpg://…",
    ),
    Variable(
        "REDIS_URL",
        "redis_url",
        "redis://127.0.0.1:6379/0",
        "unset: streams in this process",
        "share streams between workers and instances (redis://, rediss://, "
        "redis+cluster://, redis+sentinel://)",
    ),
    Variable(
        "UNBROKEN_REDIS_PREFIX",
        "redis_key_prefix",
        "chat-staging",
        "unbroken",
        "prefix of every Redis key (several deployments can share one Redis)",
    ),
    Variable(
        "UNBROKEN_MODEL",
        "model",
        "anthropic:claude-sonnet-4-5",
        "demo",
        "demo (offline), an OpenAI-compatible model name, or anthropic:<model>",
    ),
    Variable("OPENAI_API_KEY", "openai_api_key", "sk-example", "unset", "key for OpenAI models"),
    Variable(
        "OPENAI_BASE_URL",
        "openai_base_url",
        "http://127.0.0.1:11434/v1",
        "OpenAI's API",
        "an OpenAI-compatible server (Ollama, vLLM, …)",
    ),
    Variable(
        "ANTHROPIC_API_KEY",
        "anthropic_api_key",
        "sk-ant-example",
        "unset",
        "key for anthropic:<model>",
    ),
    Variable(
        "ANTHROPIC_BASE_URL",
        "anthropic_base_url",
        "http://127.0.0.1:9000",
        "Anthropic's API",
        "an Anthropic-compatible server",
    ),
    Variable(
        "UNBROKEN_SYSTEM_PROMPT",
        "system_prompt",
        "You answer questions about our product.",
        "unset",
        "instructions sent to the model before every conversation",
    ),
    Variable(
        "UNBROKEN_MAX_ANSWER_SECONDS",
        "max_answer_seconds",
        "300",
        "600",
        "an answer still running after this long is ended in error, its text kept (0: no limit)",
    ),
    Variable(
        "UNBROKEN_DEMO_TOKENS_PER_SECOND",
        "demo_tokens_per_second",
        "50",
        "20",
        "pace of the demo model",
    ),
    Variable(
        "UNBROKEN_SECRET_KEY",
        "secret_key",
        "a-long-random-secret-value",
        "generated once, kept in the database",
        "signs session cookies (at least 16 characters)",
    ),
    Variable(
        "UNBROKEN_MAX_CONCURRENT_ANSWERS",
        "max_concurrent_answers",
        "5",
        "3",
        "answers one user may have generating at once (0: no limit)",
    ),
    Variable(
        "UNBROKEN_ANSWERS_PER_MINUTE",
        "answers_per_minute",
        "60",
        "20",
        "answers one user may start per minute (0: no limit)",
    ),
    Variable(
        "UNBROKEN_METRICS_TOKEN",
        "metrics_token",
        "a-metrics-scrape-token",
        "unset: /metrics is open",
        "/metrics then needs 'Authorization: Bearer <token>'",
    ),
    Variable(
        "UNBROKEN_ALLOWED_ORIGINS",
        "allowed_origins",
        "https://chat.example.com",
        "unset",
        "comma-separated origins whose browser posts are accepted besides the "
        "service's own (behind a proxy that rewrites Host)",
    ),
    Variable(
        "UNBROKEN_MAX_BODY_BYTES",
        "max_body_bytes",
        "65536",
        "1048576",
        "largest request body accepted (413 above)",
    ),
    Variable(
        "UNBROKEN_LEASE_TTL",
        "lease_ttl",
        "5",
        "3",
        "seconds before an answer whose worker died is reported as interrupted",
    ),
    Variable(
        "UNBROKEN_RETENTION",
        "retention",
        "1200",
        "600",
        "seconds a finished stream stays in the stream backend",
    ),
    Variable(
        "UNBROKEN_DRAIN_TIMEOUT",
        "drain_timeout",
        "30",
        "10",
        "on shutdown, seconds running answers get to finish before they are stored as interrupted",
    ),
    Variable(
        "UNBROKEN_SWEEP_INTERVAL",
        "sweep_interval",
        "30",
        "10",
        "seconds between looks for answers whose worker died (0: only when the chat is opened)",
    ),
    Variable(
        "UNBROKEN_FLUSH_INTERVAL",
        "flush_interval",
        "0.05",
        "0",
        "seconds a response gathers tokens into one write (fewer writes, later tokens)",
    ),
    Variable(
        "UNBROKEN_REDIS_WRITE_GATHER",
        "redis_write_gather",
        "0.005",
        "0.002",
        "with Redis: seconds a write may wait to share a round trip with other streams'",
    ),
    Variable(
        "UNBROKEN_REDIS_PLACEMENT",
        "redis_placement",
        "worker",
        "stream",
        "with Redis Cluster: stream (each stream on the master of its own id) or worker "
        "(each worker's streams on one master: one pipeline per write window, not one per master)",
    ),
)


def help_text(width: int = 88) -> str:
    """The variables as ``unbroken chat --help`` lists them, wrapped at ``width``."""
    lines = ["environment variables:"]
    for variable in VARIABLES:
        lines.append(f"  {variable.name}")
        text = f"{variable.meaning} (default: {variable.default})"
        lines += textwrap.wrap(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)
