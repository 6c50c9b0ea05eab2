"""YAML as tenants and operators write it, read without the parts that can blow up.

``yaml.safe_load`` still expands anchors and aliases: a manifest under 1 kB with nested aliases stands for
10^8 values (measured: 34 s and +1.4 GB in the server). :func:`load` refuses anchors and aliases outright,
and bounds the text's size, the nesting depth and the number of values, before anything is built. Scalars are
typed with bounds too: an integer of at most ``_MAX_DIGITS`` digits, a float or date that is one (``!!float x``,
a 5,000-digit integer and ``2024-02-30`` were 500s), tags outside YAML's safe set refused.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["YAMLRefused", "load"]


class YAMLRefused(ValueError):
    """The text is not YAML, or uses what :func:`load` refuses (aliases, too deep, too many values)."""


#: Digits of the longest integer read: far past any count, size or id a document here holds, and far below
#: what is slow to convert (Python refuses 4,300 digits with a ValueError, which was a 500).
_MAX_DIGITS = 40


class _Loader(yaml.SafeLoader):
    """A SafeLoader that counts what it composes and refuses anchors and aliases."""

    def __init__(self, stream: str, *, max_depth: int, max_nodes: int) -> None:
        super().__init__(stream)
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            raise YAMLRefused("aliases (*name) are not accepted")
        if getattr(self.peek_event(), "anchor", None) is not None:
            raise YAMLRefused("anchors (&name) are not accepted")
        self._nodes += 1
        if self._nodes > self.max_nodes:
            raise YAMLRefused(f"more than {self.max_nodes} values")
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise YAMLRefused(f"nested deeper than {self.max_depth} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):  # noqa: ANN001 - PyYAML's signature
        if sum(ch.isalnum() for ch in str(node.value)) > _MAX_DIGITS:
            raise YAMLRefused(f"an integer of more than {_MAX_DIGITS} digits (line {node.start_mark.line + 1})")
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def load(text: str | bytes, *, max_bytes: int = 65_536, max_depth: int = 8, max_nodes: int = 2_000) -> Any:
    """The one document in ``text``; :class:`YAMLRefused` with a reason that never quotes the text."""
    if len(text) > max_bytes:
        raise YAMLRefused(f"larger than {max_bytes} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise YAMLRefused("not UTF-8 text") from None
    loader = _Loader(text, max_depth=max_depth, max_nodes=max_nodes)
    try:
        return loader.get_single_data()
    except YAMLRefused:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise YAMLRefused(f"not valid YAML (line {mark.line + 1 if mark else '?'})") from None
    except (yaml.YAMLError, RecursionError):
        raise YAMLRefused("not valid YAML") from None
    except (ValueError, TypeError, OverflowError):  # a scalar its tag cannot be: !!float x, a 30th of February
        raise YAMLRefused("a value is not what its type says (a number or date that is not one)") from None
    finally:
        loader.dispose()
