"""Nested records (run.json's sections, a metrics.json entry) as one level of dotted keys: the one flatten
that the resume checks, `image_classifier_reproduce`, MLflow's tags and metrics and `runs show` share."""

from __future__ import annotations

from collections.abc import Mapping


def flat_items(value: Mapping, prefix: str = "", *, keep_empty: bool = True) -> list[tuple[str, object]]:
    """`(dotted key, value)` pairs, in the record's order: {"a": {"b": 1}} -> [("a.b", 1)].

    `keep_empty`: an empty dict stays a value of its own, so that a comparison sees `{}` become
    `{"b": 1}`; without it an empty dict has no leaf and vanishes (nothing to log or show)."""
    items: list[tuple[str, object]] = []
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and (item or not keep_empty):
            items.extend(flat_items(item, f"{name}.", keep_empty=keep_empty))
        else:
            items.append((name, item))
    return items


def flatten(value: Mapping) -> dict:
    """{"a": {"b": 1}, "c": {}} -> {"a.b": 1, "c": {}}: every key that exists, empty dicts included, for
    comparing two records key by key."""
    return dict(flat_items(value))


def leaves(value: Mapping) -> list[tuple[str, object]]:
    """The leaf values only, for logging and showing: empty dicts vanish, and a key's trailing dots are
    dropped ({"a.": {"": 1}} -> [("a", 1)]), the form MLflow's tags and `runs show` have always had."""
    return [(key.rstrip("."), item) for key, item in flat_items(value, keep_empty=False)]
