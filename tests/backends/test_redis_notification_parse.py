"""Notification payloads as the pub/sub router reads them: what the writers publish comes
back as the same chunks; anything else is refused with ValueError (the router then has its
listeners re-read the log), whatever its shape."""

from __future__ import annotations

import pytest

from unbroken._models import Chunk, StreamState
from unbroken.backends.base import Appended, Ended
from unbroken.backends.redis._codec import _appended_payload, ended_payload, parse_notification


def test_what_the_writers_publish_reads_back() -> None:
    chunks = [Chunk(7, "Hello", 40), Chunk(8, ", wörld \U0001f600", 45), Chunk(9, "\ud800", 59)]
    assert parse_notification(_appended_payload(chunks)) == Appended(tuple(chunks))
    assert parse_notification(_appended_payload(chunks).decode("utf-8", "surrogatepass")) == (
        Appended(tuple(chunks))
    )
    for state in (StreamState.DONE, StreamState.ERROR, StreamState.CANCELLED):
        assert parse_notification(ended_payload(state)) == Ended(state)


JSON = "Expecting value|Extra data"  # json's own words for what is not one JSON value
UTF8 = "can't decode byte"


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b' {"a":[[0,0,"x"]]}', JSON),  # not as written: whitespace around the value
        (b'{"a":[[0,0,"x"]]} ', "data after the JSON value"),
        (b'{"a":[[0,0,"x"]]}{"a":[[1,1,"y"]]}', "data after the JSON value"),
        (b'{"a":[[true,0,"x"]]}', "bad types"),  # a boolean is no seq
        (b'{"a":[[0,false,"x"]]}', "bad types"),
        (b'{"a":[[0.0,0,"x"]]}', "bad types"),
        (b'{"a":[[0,0,1]]}', "bad types"),
        (b'{"a":[[-1,0,"x"]]}', "negative"),
        (b'{"a":[[0,-5,"x"]]}', "negative"),
        (b'{"a":[[0,0,"x"],[2,1,"y"]]}', "not consecutive"),  # a gap
        (b'{"a":[[0,0,"x"],[0,1,"y"]]}', "not consecutive"),  # a repeat
        (b'{"a":[[0,0]]}', "not \\[seq, offset, data\\]"),
        (b'{"a":[{"seq":0}]}', "not \\[seq, offset, data\\]"),
        (b'{"a":[]}', "no chunks"),
        (b'{"e":"active"}', "non-terminal"),
        (b'{"e":"nonsense"}', "is not a valid StreamState"),
        (b'{"a":[[0,0,"x"]],"e":"done"}', "not a one-key object"),
        (b"[1,2]", "not a one-key object"),
        (b"", JSON),
        (b"\xff", UTF8),
    ],
)
def test_anything_else_is_refused(payload: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_notification(payload)
