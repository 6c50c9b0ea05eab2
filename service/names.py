"""What things may be called: the one definition of each name rule.

Names travel into store keys, metric labels, file names and the ``model`` field, so they are short, ASCII
and never a path. Every schema, path parameter and loader that takes a name uses these.
"""

from __future__ import annotations

import re

__all__ = ["DSL_NAME_PATTERN", "EVERY_TENANT", "NAME_PATTERN", "client_name", "is_name", "split_client_name"]

#: Any name a client sends: a tenant, an adapter, a DSL it refers to (shipped DSLs included).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: A DSL a tenant publishes: lower case, so that it reads the same in a grammar file, a URL and a store key.
DSL_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"

#: An adapter manifest's ``tenants`` entry for "every tenant" (a shared adapter). In code, shared is spelled
#: ``owner=None`` (shipped or an admin's); the store's key for it is ``store.SHARED``.
EVERY_TENANT = "*"

_NAME = re.compile(NAME_PATTERN)


def is_name(value: object) -> bool:
    """Whether ``value`` is a string that :data:`NAME_PATTERN` allows."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def client_name(dsl: str | None, adapter: str) -> str:
    """What clients send as ``model`` for ``adapter`` generating ``dsl``: ``flow:contoso`` (no DSL: the adapter's
    name). The gateway's LoRA affinity and the engine's metrics use the same name."""
    return f"{dsl}:{adapter}" if dsl else adapter


def split_client_name(model: str) -> tuple[str, str | None]:
    """``model`` as (DSL, adapter or None): ``flow:contoso`` -> ("flow", "contoso"), ``flow`` -> ("flow", None)."""
    dsl, _, adapter = model.partition(":")
    return dsl, adapter or None
