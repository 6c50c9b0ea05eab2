"""How a DSL says two programs mean the same: its ``compare`` declaration and the canonical form it defines.

A DSL declares it in its YAML (shipped DSLs, onboarding) or its upload (``POST /dsls``)::

    compare:
      unordered: [group_by, selector]   # rules whose children may come in any order
      fold_case: false                  # literals compared without case
      semantic: sql                     # a plug-in that computes meaning (service.evaluation.meaning)

The *canonical form* of a program is its parse tree with the children of every ``unordered`` rule sorted and
its literals normalized (either quotes, whitespace collapsed, numbers written one way, case folded if asked),
so ``a | b`` and ``b | a`` compare equal when the DSL says the order does not matter, and a changed literal
never does. Every DSL has one, uploaded ones included; a DSL that declares nothing compares trees with
normalized literals.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import lark
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["SEMANTICS", "Comparison", "canonical", "rule_names"]

#: The meaning plug-ins a DSL may name (service.evaluation.meaning implements each).
SEMANTICS = ("sql", "cron", "regex")

_RULE = r"[a-z_][a-z0-9_]{0,63}"
_DEFINED = re.compile(rf"^\s*[?!]?({_RULE})\s*(?:\.-?\d+)?\s*:", re.MULTILINE)
_ALIAS = re.compile(rf"->\s*({_RULE})")
_QUOTED = re.compile(r"""^(["'])(.*)\1$""", re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class Comparison(BaseModel):
    """A DSL's ``compare`` declaration (bounded: it arrives with uploads)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unordered: tuple[Annotated[str, StringConstraints(pattern=rf"^{_RULE}$")], ...] = Field(default=(), max_length=64,
                                       description="Rules whose children's order does not change the meaning.")
    fold_case: bool = Field(default=False, description="Compare literals without case.")
    semantic: Literal["sql", "cron", "regex"] | None = Field(
        default=None, description="A plug-in that computes meaning: sql (run on a fixture database), cron (the "
                                  "firing times), regex (the language).")

    def check(self, grammar_text: str) -> list[str]:
        """What is wrong with the declaration for ``grammar_text``: unordered rules the grammar does not have."""
        known = rule_names(grammar_text)
        return [f"compare.unordered: the grammar has no rule {name!r}" for name in self.unordered
                if name not in known]

    def strongest(self) -> str:
        """The strongest score this declaration gives: "semantic", else "canonical"."""
        return "semantic" if self.semantic else "canonical"


def rule_names(grammar_text: str) -> set[str]:
    """The rule names a lark grammar defines (aliases included): what a parse tree's nodes can be called."""
    return set(_DEFINED.findall(grammar_text)) | set(_ALIAS.findall(grammar_text))


def canonical(tree: lark.Tree, comparison: Comparison) -> tuple:
    """The canonical form of a parse tree (nested tuples), without recursion (depth is the code's)."""
    unordered = set(comparison.unordered)
    done: dict[int, tuple] = {}
    stack: list[tuple[lark.Tree, bool]] = [(tree, False)]
    while stack:
        node, expanded = stack.pop()
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in node.children if isinstance(c, lark.Tree))
            continue
        children = [done.pop(id(c)) if isinstance(c, lark.Tree) else _literal(c, comparison)
                    for c in node.children if c is not None]
        if node.data in unordered:
            children.sort(key=repr)
        done[id(node)] = (str(node.data), *children)
    return done[id(tree)]


def _literal(token: lark.Token, comparison: Comparison) -> tuple[str, str]:
    """A token as its type and normalized value; a quoted literal is a "string" whichever quotes it wears."""
    value, kind = " ".join(str(token).split()), token.type
    quoted = _QUOTED.match(value)
    if quoted:
        value, kind = " ".join(quoted.group(2).split()), "string"
    elif _NUMBER.match(value):
        number = float(value)
        value = str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)
    if comparison.fold_case:
        value = value.casefold()
    return (kind, value)
