"""A tenant's policy for the code it generates, and the check of code against it.

    grammars/policy.yaml           the defaults, for every tenant
    grammars/tenants/<t>.yaml      a ``policy:`` section overriding them (read by service.grammars.tenants)

Denied operations (``connector.op``) and HTTP methods, the e-mail domains and HTTP hosts code may address, and
denied SQL columns. :func:`output_verdict` reads what the code says, whatever grammar it was written in (a
tenant cannot escape its policy by uploading a copy of a DSL with other names): e-mail addresses and URLs
wherever they are written, operations by their dotted name, HTTP methods and SQL columns as bare words.

Where it can, the policy is also compiled into the shipped grammars (:meth:`Policy.narrow`: e-mail domains,
HTTP hosts and methods; denied operations are left out of the catalog), so constrained decoding cannot write
what the policy forbids and the output check is a backstop (for unconstrained requests and uploads).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlparse

import lark
import re2

__all__ = ["Policy", "Verdict", "output_verdict"]


@dataclass(frozen=True)
class Verdict:
    rule: str
    reason: str


@dataclass(frozen=True)
class Policy:
    """What a tenant's generated automations may do (empty allow-lists allow everything)."""

    denied_operations: frozenset[str] = frozenset()
    denied_http_methods: frozenset[str] = frozenset()
    allowed_email_domains: tuple[str, ...] = ()
    allowed_http_hosts: tuple[str, ...] = ()
    denied_sql_columns: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, data: dict, base: Policy | None = None) -> Policy:
        base = base or cls()

        def pick(key, kind, default):
            return kind(str(v).lower() if key != "denied_operations" else str(v) for v in data[key]) \
                if key in data else default

        return cls(
            denied_operations=pick("denied_operations", frozenset, base.denied_operations),
            denied_http_methods=frozenset(m.upper() for m in pick("denied_http_methods", frozenset,
                                                                     base.denied_http_methods)),
            allowed_email_domains=pick("allowed_email_domains", tuple, base.allowed_email_domains),
            allowed_http_hosts=pick("allowed_http_hosts", tuple, base.allowed_http_hosts),
            denied_sql_columns=pick("denied_sql_columns", frozenset, base.denied_sql_columns),
        )

    def narrow(self, grammar_text: str) -> str:
        """``grammar_text`` for the engine, its EMAIL, URL and METHOD terminals narrowed to this policy.

        EMAIL and URL become the intersection (llguidance's ``&``) of the grammar's own terminal and the
        allowed domains or hosts, so the narrowed grammar accepts a subset of what the full one parses.
        Terminals are recognised by name (the names the output check reads); a grammar without them is
        returned unchanged. Denied operations are left out of the catalog by the caller (``Catalog.without``).
        """
        allowed = {}
        if self.allowed_email_domains:
            domains = _alternatives(self.allowed_email_domains)
            allowed["EMAIL"] = rf'/"[^"@]{{1,64}}@([a-z0-9-]{{1,63}}\.){{0,4}}({domains})"/'
        if self.allowed_http_hosts:
            hosts = _alternatives(self.allowed_http_hosts)
            allowed["URL"] = rf'/"https:\/\/([a-z0-9-]{{1,63}}\.){{0,4}}({hosts})(\/[^"]{{0,255}})?"/'

        def _rewrite(m: re.Match[str]) -> str:
            name, definition = m.group(1), m.group(2)
            if name == "METHOD" and self.denied_http_methods:
                methods = [x for x in re.findall(r'"([A-Z]+)"', definition) if x not in self.denied_http_methods]
                definition = " | ".join(f'"{x}"' for x in methods)
            return f"{name}: {definition} & {allowed[name]}" if name in allowed else f"{name}: {definition}"

        return re.sub(r"^(EMAIL|URL|METHOD):[ \t]*(.*)$", _rewrite, grammar_text, flags=re.MULTILINE)


def _alternatives(names: tuple[str, ...]) -> str:
    return "|".join(re.escape(n.lower()).replace("/", "") for n in names)


_EMAIL = re2.compile(r"[A-Za-z0-9._%+-]+@((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})")
_URL = re2.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")
_QUOTED = re2.compile(r"\"[^\"\n]*\"|'[^'\n]*'")
_WORD = re2.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def output_verdict(code: str, policy: Policy, *, tree: lark.Tree | None = None) -> Verdict | None:
    """The first policy rule ``code`` breaks, or None; read from the text, so names in the grammar do not matter.

    ``tree`` (the parse of ``code``) adds catalog operations by rule name (``connector__op``).
    """
    operations = set()
    if tree is not None:
        operations = {str(node.data).replace("__", ".", 1) for node in tree.iter_subtrees() if "__" in node.data}
    for operation in sorted(policy.denied_operations):
        if operation in operations or re.search(rf"(?<![\w.]){re.escape(operation)}(?!\w)", code):
            return Verdict("denied_operation", f"{operation} is not allowed for this tenant")
    if policy.allowed_email_domains:
        for domain in _EMAIL.findall(code):
            if not _within(domain.lower(), policy.allowed_email_domains):
                return Verdict("external_recipient", f"{domain.lower()} is outside this tenant's e-mail domains")
    if policy.allowed_http_hosts:
        for url in _URL.findall(code):
            host = (urlparse(url).hostname or "").lower()
            if not _within(host, policy.allowed_http_hosts):
                return Verdict("external_host", f"{host} is not an allowed HTTP host for this tenant")
    if policy.denied_http_methods or policy.denied_sql_columns:
        # Bare words of the code, and double-quoted strings that are nothing but a word (`"DELETE"`, a quoted SQL
        # identifier); words inside longer strings and single-quoted values are text, not names.
        bare = _QUOTED.sub(" ", code)
        quoted = {q[1:-1] for q in _QUOTED.findall(code) if q.startswith('"') and _WORD.fullmatch(q[1:-1])}
        words = set(_WORD.findall(bare)) | quoted
        methods = sorted(w.upper() for w in words if w.upper() in policy.denied_http_methods)
        if methods:
            return Verdict("denied_http_method", f"HTTP {methods[0]} is not allowed for this tenant")
        columns = sorted({w.lower() for w in words} & policy.denied_sql_columns)
        if columns:
            return Verdict("denied_column", f"the code reads {', '.join(columns)}")
    return None


def _within(host: str, allowed: tuple[str, ...]) -> bool:
    return any(host == a or host.endswith("." + a) for a in allowed)
