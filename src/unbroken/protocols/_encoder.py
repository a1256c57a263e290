"""The contract between a streaming response and a wire protocol.

A response reads engine items (`Chunk`, then one `StreamEnd`) in batches and hands each batch
to an encoder, which turns it into the text the client parses. The encoder knows the
protocol; the response knows the connection (keep-alives, timeouts, disconnects). So any
protocol can be served by one response, and an encoder can be tested as a pure transform.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from unbroken._models import Chunk, StreamEnd

__all__ = ["StreamEncoder"]


class StreamEncoder(ABC):
    """Turns one stream's engine items into one protocol's text. One per response.

    ``finished`` turns true once the encoder wrote the end of the stream (from a `StreamEnd`
    or `fail`); nothing may be encoded after that.
    """

    #: The HTTP response headers of this protocol.
    headers: dict[str, str]

    def __init__(self) -> None:
        self.finished = False

    def seen(self, chunk: Chunk) -> None:  # noqa: B027 - most protocols need nothing here
        """Take note of a chunk the client already has (the one it resumes after), for a
        protocol whose end depends on what was delivered before. Writes nothing."""

    @abstractmethod
    def encode(self, items: Iterable[Chunk | StreamEnd]) -> str:
        """The wire text of a batch of items; a `StreamEnd`, if any, comes last."""

    @abstractmethod
    def keepalive(self) -> str:
        """Text the client ignores, written while the stream is idle."""

    @abstractmethod
    def fail(self, message: str) -> str:
        """The end of the response when the stream cannot be read any more: the protocol's
        error, with ``message`` for the user."""
