"""The public surface is explicit: everything in ``__all__`` exists, it is sorted, and what it
exports says where users import it from (``unbroken.StreamEngine``, not the private module
that defines it), in reprs, tracebacks and docs."""

from __future__ import annotations

import importlib
import re
from types import FunctionType, ModuleType

import pytest

import unbroken

#: Modules users import from; each curates its names in ``__all__``.
PUBLIC_MODULES = (
    "unbroken",
    "unbroken.asgi",
    "unbroken.backends.redis",
    "unbroken.protocols",
    "unbroken.protocols.ai_sdk",
)


def isort_order(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 keeps ``__all__`` in: constants, then classes, then the rest,
    each group in natural order."""
    if name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    return group, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@pytest.fixture(params=PUBLIC_MODULES)
def module(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


def test_all_exports_exist_and_are_sorted() -> None:
    for name in unbroken.__all__:
        assert hasattr(unbroken, name), name
    assert unbroken.__all__ == sorted(unbroken.__all__)


def test_every_public_class_is_exported() -> None:
    public = {
        name
        for name, value in vars(unbroken).items()
        if not name.startswith("_") and isinstance(value, type)
    }
    assert public <= set(unbroken.__all__)


def test_every_module_exports_what_it_lists_in_order(module: ModuleType) -> None:
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
    assert module.__all__ == sorted(module.__all__, key=isort_order)
    assert len(set(module.__all__)) == len(module.__all__)


def test_exported_members_report_a_public_module(module: ModuleType) -> None:
    """Each exported class and function reports the module users import it from: this one,
    or another public module that exports the same object under the same name."""
    wrong = {}
    for name in module.__all__:
        member = getattr(module, name)
        if not isinstance(member, type | FunctionType):
            continue  # constants and type aliases have no module of their own
        home = member.__module__
        if home == module.__name__:
            continue
        if not any(part.startswith("_") for part in home.split(".")):
            home_module = importlib.import_module(home)
            if name in getattr(home_module, "__all__", ()) and getattr(home_module, name) is member:
                continue
        wrong[name] = home
    assert wrong == {}


def test_the_main_entry_points_show_their_public_names() -> None:
    from unbroken.backends.redis import RedisBackend
    from unbroken.protocols.ai_sdk import UIMessageStreamEncoder

    assert unbroken.StreamEngine.__module__ == "unbroken"
    assert unbroken.MemoryBackend.__module__ == "unbroken"
    assert RedisBackend.__module__ == "unbroken.backends.redis"
    assert UIMessageStreamEncoder.__module__ == "unbroken.protocols.ai_sdk"
    assert repr(unbroken.StreamEngine) == "<class 'unbroken.StreamEngine'>"
