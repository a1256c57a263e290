"""The public surface is explicit: everything in ``__all__`` exists, and it is sorted."""

from __future__ import annotations

import unbroken


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
