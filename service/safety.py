"""Responsible-AI checks: on the request text before generation, and on the parsed output after it.

``check_request`` refuses four kinds of requests, by rules (offline, microseconds; a packaged classifier
did not pay for itself at these rates, docs/SAFETY.md): prompt injection (instructions aimed at the model),
data exfiltration (bulk data or secrets sent out), mass deletion, and harassment or spam. ``check_output``
applies the tenant's policy to the parse tree: denied operations and HTTP methods, recipients outside the
allowed e-mail domains, hosts outside the allowed HTTP hosts, denied SQL columns.

Where it can, the policy is also compiled into the tenant's grammar (``Policy.narrow``: e-mail domains, HTTP
hosts and methods, denied operations left out of the catalog), so constrained decoding cannot write what the
policy forbids and the output check is a backstop (for unconstrained requests and uploaded grammars).

Policies: ``grammars/policy.yaml`` (defaults) and a ``policy:`` section in ``grammars/tenants/<tenant>.yaml``.
A block raises ``SafetyBlocked`` (400) naming the rule, and counts in ``nl2dsl_safety_blocks_total``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import lark
import yaml

from service import metrics
from service.errors import SafetyBlocked

__all__ = ["Policy", "SafetyChecker", "Verdict", "request_verdict"]


@dataclass(frozen=True)
class Verdict:
    rule: str
    reason: str


def _rx(*parts: str) -> re.Pattern[str]:
    return re.compile("".join(parts), re.IGNORECASE)


_GAP = r"[^.;!?]{0,80}?"  # within one clause
_BULK = r"(?:all|every|each|entire|whole|full|complete|bulk|mass)\b"
_PEOPLE_DATA = (r"(?:customer|client|user|employee|patient|member|subscriber|contact|payroll|salary|"
                r"personal|private|confidential|internal)s?\b")
_DATA = (r"(?:data|database|db|records?|list|emails?|e-mails?|addresses|details|files?|info|information|pii|"
         r"rows|table|export|dump|backup|spreadsheet|sheet|docs|documents|contacts|numbers|history)\b")
_SECRETS = (r"(?:passwords?|passwd|credentials?|api[ _-]?keys?|access[ _-]?keys?|secret[ _-]?keys?|secrets|"
            r"tokens?|ssh[ _-]?keys?|private[ _-]?keys?|credit[ _-]?card(?: numbers?)?|card numbers|cvv|"
            r"social security(?: numbers?)?|ssns?|bank (?:account|login)s?|2fa codes?|otp codes?|session cookies)\b")
_SEND = (r"(?:send|forward|upload|export|copy|post|email|e-mail|mail|leak|dump|transfer|sync|push|share|"
         r"exfiltrate|pipe|ship|replicate|mirror|text|sms|dm|publish|paste)\w*\b")
_OUTSIDE = (r"(?:external|outside|personal|private|my own|my home|competitor|rival|third[- ]party|anonymous|"
            r"unknown|pastebin|gmail|yahoo|hotmail|protonmail|outlook\.com|mail\.ru|dropbox|mega\.nz|"
            r"attacker|burner|throwaway|offshore|public)\b")
_DELETE = r"(?:delete|remove|wipe|erase|purge|destroy|drop|truncate|shred|nuke|clear out|clean out|empty)\w*\b"
_DELETE_TARGET = (r"(?:files?|folders?|records?|rows|tickets?|users?|accounts?|customers?|data|databases?|"
                  r"tables?|repos?|repositories|backups?|emails?|messages?|documents?|leads?|deals?|orders?|"
                  r"invoices?|logs?|events?|tasks?|issues?|everything|history|drive|disk|bucket|storage)\b")

_REQUEST_RULES: list[tuple[str, re.Pattern[str], str]] = [
    ("prompt_injection", _rx(
        r"\b(?:ignore|disregard|forget|override|bypass|skip|drop)\b", _GAP,
        r"\b(?:previous|prior|above|earlier|all|any|your|the|system|these|those|safety|original)\b", _GAP,
        r"\b(?:instructions?|rules|prompts?|guidelines|constraints|polic(?:y|ies)|guardrails|filters?|grammar|"
        r"restrictions?|directives?)\b"),
     "instructions aimed at the model instead of a request"),
    ("prompt_injection", _rx(
        r"\b(?:reveal|print|show|output|repeat|leak|tell me|display|dump)\b", _GAP,
        r"\b(?:your|the|system|hidden|initial|internal)\s+(?:system\s+)?(?:prompt|instructions|rules|"
        r"configuration|context)\b"),
     "asks for the model's own instructions"),
    ("prompt_injection", _rx(
        r"\b(?:you are now|from now on you|act as|pretend (?:to be|you are)|roleplay as|switch to|enter|enable)\b",
        _GAP, r"\b(?:dan|jailbr\w+|developer mode|god mode|unrestricted|unfiltered|uncensored|no rules|"
        r"evil|admin mode|sudo mode|root mode)\b"),
     "tries to switch the model into another role"),
    ("prompt_injection", _rx(r"<\|im_start\|>|<\|im_end\|>|\[/?INST\]|<</?SYS>>|<\|system\|>|"
                             r"###\s*(?:system|instruction)|\bnew (?:system )?instructions?\s*:|\bsystem\s*:\s"),
     "contains chat-template or system markers"),
    ("data_exfiltration", _rx(
        r"\b", _SEND, _GAP, r"(?<!update )(?<!reset )(?<!change )(?<!rotate )(?<!renew )\b", _SECRETS,
        r"(?!\s*(?:reset|change|policy|expir\w*|rotation|update|reminder|notification)s?\b)"),
     "sends passwords, keys or other secrets"),
    ("data_exfiltration", _rx(
        r"\b", _SEND, _GAP, r"(?:\b", _BULK, _GAP, r"\b(?:", _PEOPLE_DATA, r"|", _DATA, r")|\b", _PEOPLE_DATA,
        _GAP, r"\b", _DATA, r")", _GAP, r"\b(?:to|into|onto|at|on|with)\b", _GAP, r"\b", _OUTSIDE),
     "sends bulk or personal data outside the organisation"),
    ("data_exfiltration", _rx(
        r"\b(?:exfiltrate|siphon|smuggle|steal|scrape and send|harvest)\w*\b"),
     "exfiltration"),
    ("data_exfiltration", _rx(
        r"\b", _SEND, _GAP, r"\b", _BULK, _GAP, r"\b", _PEOPLE_DATA, _GAP, r"\b", _DATA,
        r"[^.;!?]{0,80}?(?:\b[a-z0-9._-]+@(?!example\.com)(?:gmail|yahoo|hotmail|proton(?:mail)?|outlook|mail\.ru|"
        r"aol|icloud)\.|https?://(?!\S*example\.com))"),
     "sends bulk personal data to a personal address or an outside URL"),
    ("mass_deletion", _rx(
        r"\b", _DELETE, _GAP, r"\b(?:all|every|each|entire|whole|any|the whole|everything)\b", _GAP,
        r"\b", _DELETE_TARGET),
     "deletes data in bulk"),
    ("mass_deletion", _rx(r"\b", _DELETE, r"\s+everything\b|\brm\s+-rf\b|\bdrop\s+(?:table|database|schema)\b|"
                          r"\btruncate\s+table\b|\bdelete\s+from\s+\w+\s*(?:;|$)|\b(?:format|wipe|erase|destroy)\s+"
                          r"(?:the\s+)?(?:hard\s+)?(?:drives?|disks?|servers?|databases?|db)\b|\bfactory reset\b"),
     "destructive command"),
    ("harassment_spam", _rx(
        r"\b(?:spam|spamming|mass[- ]?(?:mail|email|text|message|dm)\w*|bomb(?:ard)?\w*|flood\w*)\b"),
     "spam"),
    ("harassment_spam", _rx(
        r"\b(?:send|text|email|e-mail|message|post|sms|dm|call|ping|notify)\w*\b", _GAP,
        r"(?:\bevery\s+(?:single\s+)?(?:second|minute|few (?:seconds|minutes))\b|\b\d{3,}\s+(?:times|messages|"
        r"emails|texts|sms|dms|copies)\b|\b(?:thousands?|hundreds|millions?) of\b|\bnon-?stop\b|"
        r"\bover and over\b|\bendless(?:ly)?\b|\bnever stop\b|\buntil (?:they|he|she) (?:reply|replies|respond|"
        r"responds|quits?|gives? up|breaks?)\b)"),
     "messages in floods"),
    ("harassment_spam", _rx(
        r"\b(?:harass|bully|intimidate|threaten|stalk|doxx?|humiliate|insult|abuse|troll|shame|blackmail|"
        r"extort|scare|torment)\w*\b"),
     "harassment"),
    ("harassment_spam", _rx(
        r"\b(?:send|text|email|e-mail|message|post|sms|dm|tell|call)\w*\b", _GAP,
        r"\b(?:idiot|stupid|worthless|loser|moron|useless|pathetic|ugly|fat|dumb|kill (?:yo)?urself|kys|die\b|"
        r"we know where you live|you(?:'ll| will) regret|watch your back|hurt you|ruin (?:your|his|her) life|"
        r"you(?:'re| are) fired and)"),
     "abusive or threatening message"),
    ("harassment_spam", _rx(
        r"\b(?:phish\w*|fake (?:login|invoice|password reset)|verify your (?:account|password|identity) at|"
        r"(?:pretend|pose|posing|impersonat\w*)\b[^.;!?]{0,40}\b(?:bank|it department|it support|ceo|paypal|"
        r"microsoft|apple|irs|police))"),
     "phishing or impersonation"),
    ("harassment_spam", _rx(
        r"\b(?:send|text|email|message|blast)\w*\b", _GAP, r"\b(?:all|every|each)\b", _GAP,
        r"\b(?:contacts?|customers?|users?|numbers|subscribers?|people|phone numbers|leads?)\b", _GAP,
        r"\b(?:crypto|bitcoin|giveaway|lottery|you(?:'ve| have) won|prize|casino|viagra|get rich|investment "
        r"opportunity|miracle)\b"),
     "unsolicited bulk promotion"),
]


def request_verdict(text: str) -> Verdict | None:
    """The first rule the request breaks, or None."""
    normalized = " ".join(text.split())
    for rule, pattern, reason in _REQUEST_RULES:
        if pattern.search(normalized):
            return Verdict(rule, reason)
    return None


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


@dataclass
class SafetyChecker:
    """The request rules and the output policies of every tenant; ``enabled`` False turns both off."""

    default: Policy = field(default_factory=Policy)
    tenants: dict[str, Policy] = field(default_factory=dict)
    enabled: bool = True

    @classmethod
    def load(cls, grammars_dir: Path, *, enabled: bool = True) -> SafetyChecker:
        path = Path(grammars_dir) / "policy.yaml"
        default = Policy.from_dict(yaml.safe_load(path.read_text()) or {}) if path.exists() else Policy()
        tenants = {}
        for tenant_file in sorted((Path(grammars_dir) / "tenants").glob("*.yaml")):
            meta = yaml.safe_load(tenant_file.read_text()) or {}
            if meta.get("policy"):
                tenants[str(meta["tenant"])] = Policy.from_dict(meta["policy"], base=default)
        return cls(default, tenants, enabled)

    def policy(self, tenant: str | None) -> Policy:
        return self.tenants.get(tenant or "", self.default)

    def check_request(self, text: str) -> None:
        if not self.enabled:
            return
        verdict = request_verdict(text)
        if verdict:
            _block("request", verdict)

    def check_output(self, tree: lark.Tree | None, *, dsl: str, tenant: str | None) -> None:
        if not self.enabled or tree is None:
            return
        verdict = output_verdict(tree, self.policy(tenant), dsl=dsl)
        if verdict:
            _block("output", verdict)


def output_verdict(tree: lark.Tree, policy: Policy, *, dsl: str) -> Verdict | None:
    """The first policy rule the parsed output breaks, or None."""
    for node in tree.iter_subtrees_topdown():
        name = str(node.data)
        if "__" in name:  # a catalog operation: connector__op
            operation = name.replace("__", ".", 1)
            if operation in policy.denied_operations:
                return Verdict("denied_operation", f"{operation} is not allowed for this tenant")
        for token in (c for c in node.children if isinstance(c, lark.Token)):
            verdict = _token_verdict(token, policy)
            if verdict:
                return verdict
    if dsl == "sql" and policy.denied_sql_columns:
        identifiers = {str(t).lower() for t in tree.scan_values(lambda v: isinstance(v, lark.Token))}
        denied = sorted(identifiers & policy.denied_sql_columns)
        if denied:
            return Verdict("denied_column", f"the query reads {', '.join(denied)}")
    return None


def _token_verdict(token: lark.Token, policy: Policy) -> Verdict | None:
    value = str(token).strip('"')
    if token.type == "METHOD" and value.upper() in policy.denied_http_methods:
        return Verdict("denied_http_method", f"HTTP {value.upper()} is not allowed for this tenant")
    if token.type == "EMAIL" and policy.allowed_email_domains:
        domain = value.rsplit("@", 1)[-1].lower()
        if not _within(domain, policy.allowed_email_domains):
            return Verdict("external_recipient", f"{domain} is outside this tenant's e-mail domains")
    if token.type == "URL" and policy.allowed_http_hosts:
        host = (urlparse(value).hostname or "").lower()
        if not _within(host, policy.allowed_http_hosts):
            return Verdict("external_host", f"{host} is not an allowed HTTP host for this tenant")
    return None


def _within(host: str, allowed: tuple[str, ...]) -> bool:
    return any(host == a or host.endswith("." + a) for a in allowed)


def _block(stage: str, verdict: Verdict) -> None:
    metrics.SAFETY_BLOCKS.labels(stage, verdict.rule).inc()
    raise SafetyBlocked(
        f"blocked by the safety policy ({verdict.rule}): {verdict.reason}",
        detail={"stage": stage, "rule": verdict.rule},
    )
