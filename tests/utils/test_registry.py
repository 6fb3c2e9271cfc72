"""The generic registry and the reader registry: registration once, lookups, and the messages that list
what exists, checked against hand-written expectations."""

from __future__ import annotations

import pytest

from reidscale.utils.registry import ReaderRegistry, Registry


def test_register_get_keys_in_order_and_duplicates_refused() -> None:
    table: Registry[str, int] = Registry("colour", entries={"red": 1})
    assert table.register("green")(2) == 2  # the decorator returns its target unchanged
    table.add("blue", 3)
    assert table.keys() == ("red", "green", "blue") and list(table) == ["red", "green", "blue"]
    assert len(table) == 3 and "green" in table and "Green" not in table and [] not in table
    assert table.get("blue") == 3
    with pytest.raises(ValueError, match=r"^colour 'red' is already registered$"):
        table.add("red", 9)
    with pytest.raises(ValueError, match=r"^a second red is already registered$"):
        table.register("red", what="a second red")(9)
    assert table.get("red") == 1


def test_unknown_keys_list_the_known_ones() -> None:
    table: Registry[str, int] = Registry("widget", "kind", {"a": 1, "b": 2})
    with pytest.raises(ValueError, match=r"^unknown widget kind 'c'; known kinds: a, b$"):
        table.get("c")
    error = table.unknown("z", known=["x:*", "y"])
    assert str(error) == "unknown widget kind 'z'; known kinds: x:*, y"


def test_fold_case_and_non_string_keys() -> None:
    folded: Registry[str, int] = Registry("dataset", entries={"market1501": 1}, fold_case=True)
    assert folded.get(" Market1501 ") == 1 and "MARKET1501" in folded
    by_class: Registry[type, str] = Registry("handler", "class")
    by_class.register(int, what="a handler for int")("i")
    assert by_class.get(int) == "i" and float not in by_class
    with pytest.raises(ValueError, match="a handler for int is already registered"):
        by_class.add(int, "again", what="a handler for int")


def test_copy_is_independent() -> None:
    table: Registry[str, int] = Registry("thing", entries={"one": 1})
    other = table.copy()
    other.add("two", 2)
    assert table.keys() == ("one",) and other.keys() == ("one", "two") and other.noun == "thing"
    readers = ReaderRegistry(("reader", "name"), {"x": lambda path: path})
    assert isinstance(readers.copy(), ReaderRegistry)


def read_plain(path: str) -> str:
    return f"plain:{path}"


def read_with_options(path: str, *, variant: str = "a", strict: bool = True) -> str:
    return f"{path}:{variant}:{strict}"


def test_reader_registry_options_and_load() -> None:
    readers = ReaderRegistry(("source", "kind"), {"plain": read_plain, "rich": read_with_options})
    assert readers.names == ("plain", "rich") and readers.reader("plain") is read_plain
    assert readers.options("rich") == ("variant", "strict") and readers.options("plain") == ()
    assert readers.load("rich", "p", variant="b") == "p:b:True"
    with pytest.raises(
        ValueError, match=r"source kind 'plain' does not take option\(s\) \['x'\]; it takes no"
    ):
        readers.load("plain", "p", x=1)
    with pytest.raises(ValueError, match=r"takes variant, strict"):
        readers.load("rich", "p", colour=1)
    with pytest.raises(ValueError, match=r"^unknown source kind 'nope'; known kinds: plain, rich$"):
        readers.load("nope", "p")
