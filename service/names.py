"""What things may be called: the one definition of each name rule.

Names travel into store keys, metric labels, file names and the ``model`` field, so they are short, ASCII
and never a path. Every schema, path parameter and loader that takes a name uses these.
"""

from __future__ import annotations

import re

__all__ = ["DSL_NAME_PATTERN", "NAME_PATTERN", "is_name"]

#: Any name a client sends: a tenant, an adapter, a DSL it refers to (shipped DSLs included).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: A DSL a tenant publishes: lower case, so that it reads the same in a grammar file, a URL and a store key.
DSL_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"

_NAME = re.compile(NAME_PATTERN)


def is_name(value: object) -> bool:
    """Whether ``value`` is a string that :data:`NAME_PATTERN` allows."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None
