"""The connector catalog of a catalog DSL (``flow``): operations, their parameters and types.

The catalog is data (``grammars/flow.yaml``) and is compiled into the grammar rules ``trigger_call`` and
``action_call``, so constrained output can only name operations and parameter keys that exist:
API-name and parameter-key hallucination is impossible by construction. Parameters keep catalog order,
required ones first; optional ones may be left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from service.errors import GrammarInvalid

__all__ = ["Catalog", "Operation", "Param"]

_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """A trigger or action: ``<connector>.<name>(<params>)``."""

    connector: str
    name: str
    kind: str  # "trigger" | "action"
    params: tuple[Param, ...]

    @property
    def full_name(self) -> str:
        return f"{self.connector}.{self.name}"

    @property
    def rule(self) -> str:
        """The grammar rule of this operation; the parse tree carries it (``chat__post_message``)."""
        return f"{self.connector}__{self.name}"


@dataclass(frozen=True)
class Catalog:
    """Connectors and their operations; ``types`` maps catalog type names to grammar terminals."""

    types: dict[str, str]
    operations: tuple[Operation, ...]
    descriptions: dict[str, str]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<catalog>") -> Catalog:
        types = dict(data.get("types", {}))
        operations: list[Operation] = []
        descriptions: dict[str, str] = {}
        for connector, spec in (data.get("connectors") or {}).items():
            _check_ident(connector, source)
            descriptions[connector] = (spec or {}).get("description", "")
            for kind in ("trigger", "action"):
                for op_name, params in ((spec or {}).get(kind + "s") or {}).items():
                    _check_ident(op_name, source)
                    operations.append(
                        Operation(connector, op_name, kind, _params(params or {}, types, source, connector, op_name))
                    )
        return cls(types=types, operations=tuple(operations), descriptions=descriptions)

    def merged(self, other: Catalog) -> Catalog:
        """This catalog plus ``other``'s connectors (a tenant's private connectors on top of the shared ones)."""
        return Catalog(
            types={**self.types, **other.types},
            operations=self.operations + other.operations,
            descriptions={**self.descriptions, **other.descriptions},
        )

    def without(self, operations: frozenset[str]) -> Catalog:
        """This catalog less the named operations (``connector.op``): a policy's denied operations."""
        kept = tuple(op for op in self.operations if op.full_name not in operations)
        return Catalog(types=self.types, operations=kept, descriptions=self.descriptions)

    def find(self, full_name: str) -> Operation | None:
        return next((op for op in self.operations if op.full_name == full_name), None)

    def grammar_rules(self) -> str:
        """Lark rules ``trigger_call`` / ``action_call`` and one rule per operation."""
        lines = ["// compiled from the catalog"]
        for kind in ("trigger", "action"):
            ops = [op for op in self.operations if op.kind == kind]
            lines.append(f"{kind}_call: " + " | ".join(op.rule for op in ops))
        for op in self.operations:
            lines.append(f'{op.rule}: "{op.full_name}(" {self._params_rule(op)} ")"')
        return "\n".join(lines) + "\n"

    def _params_rule(self, op: Operation) -> str:
        def pair(p: Param, comma: bool) -> str:
            return f'"{", " if comma else ""}{p.name}: " {self.types[p.type]}'

        required = [p for p in op.params if p.required]
        optional = [p for p in op.params if not p.required]
        if required:
            parts = [pair(p, i > 0) for i, p in enumerate(required)]
            parts += [f"({pair(p, True)})?" for p in optional]
            return " ".join(parts)
        if not optional:
            return ""
        # Only optional parameters: the first one present carries no comma.
        alternatives = []
        for i, first in enumerate(optional):
            alternatives.append(" ".join([pair(first, False)] + [f"({pair(p, True)})?" for p in optional[i + 1 :]]))
        return "(" + " | ".join(alternatives) + ")?"


def _params(
    params: dict[str, Any], types: dict[str, str], source: str, connector: str, op_name: str
) -> tuple[Param, ...]:
    out = []
    for name, spec in params.items():
        _check_ident(name, source)
        type_ = (spec or {}).get("type", "text")
        if type_ not in types:
            raise GrammarInvalid(
                f"{source}: {connector}.{op_name} parameter {name!r} has unknown type {type_!r}",
                detail={"source": source, "known_types": sorted(types)},
            )
        out.append(Param(name, type_, bool((spec or {}).get("required", False))))
    # Required parameters first, each group in catalog order: the one canonical spelling of a call.
    return tuple(sorted(out, key=lambda p: not p.required))


def _check_ident(name: str, source: str) -> None:
    if not _IDENT.match(str(name)):
        raise GrammarInvalid(
            f"{source}: catalog name {name!r} must be a lower-case identifier of at most 32 characters",
            detail={"source": source},
        )
