"""Responsible-AI checks: on the request (text and context) before generation, on the output after it.

``check_request`` refuses four kinds of requests, by rules (offline, microseconds; a packaged classifier
did not pay for itself at these rates, docs/SAFETY.md): prompt injection (instructions aimed at the model,
chat-template markers), data exfiltration (bulk data or secrets sent out), mass deletion, and harassment or
spam. The rules run on RE2 (``google-re2``), whose matching time is linear in the text: a backtracking
engine spent 1.3 s on 2,000 characters crafted against the rules' bounded gaps.

``check_output`` holds the code to the tenant's policy (:mod:`service.policy`), whatever DSL it is written in.
A block raises ``SafetyBlocked`` (400) naming the rule, and counts in ``nl2dsl_safety_blocks_total``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import lark
import re2

from service import metrics
from service.errors import SafetyBlocked
from service.policy import Policy, Verdict, output_verdict

__all__ = ["SafetyChecker", "request_verdict"]


_OPTIONS = re2.Options()
_OPTIONS.case_sensitive = False


def _rx(*parts: str):
    """A case-insensitive RE2 pattern (linear-time matching; no look-around)."""
    return re2.compile("".join(parts), _OPTIONS)


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

# What a backtracking engine expressed with look-around, RE2 gets by rewriting the text first (linear too):
# secrets named as the subject of a reset or a policy are not secrets being sent, and links to example.com
# are the documentation's own.
_BENIGN_SECRETS = [
    _rx(r"\b((?:update|reset|change|rotate|renew) )", _SECRETS),
    _rx(r"\b", _SECRETS, r"(\s*(?:reset|change|policy|expir\w*|rotation|update|reminder|notification)s?\b)"),
]
_EXAMPLE_LINKS = _rx(r"https?://\S*example\.com\S*")


def _without_benign_secrets(text: str) -> str:
    text = _BENIGN_SECRETS[0].sub(r"\1_", text)
    return _BENIGN_SECRETS[1].sub(r"_\1", text)


def _without_example_links(text: str) -> str:
    return _EXAMPLE_LINKS.sub("internal-link", text)


class _Rule(NamedTuple):
    name: str
    pattern: Any  # an RE2 pattern
    reason: str
    #: Rewrites the text before this rule reads it (what look-around would have said).
    prepare: Callable[[str], str] | None = None


_REQUEST_RULES: list[_Rule] = [
    _Rule("prompt_injection", _rx(
        r"\b(?:ignore|disregard|forget|override|bypass|skip|drop)\b", _GAP,
        r"\b(?:previous|prior|above|earlier|all|any|your|the|system|these|those|safety|original)\b", _GAP,
        r"\b(?:instructions?|rules|prompts?|guidelines|constraints|polic(?:y|ies)|guardrails|filters?|grammar|"
        r"restrictions?|directives?)\b"),
     "instructions aimed at the model instead of a request"),
    _Rule("prompt_injection", _rx(
        r"\b(?:reveal|print|show|output|repeat|leak|tell me|display|dump)\b", _GAP,
        r"\b(?:your|the|system|hidden|initial|internal)\s+(?:system\s+)?(?:prompt|instructions|rules|"
        r"configuration|context)\b"),
     "asks for the model's own instructions"),
    _Rule("prompt_injection", _rx(
        r"\b(?:you are now|from now on you|act as|pretend (?:to be|you are)|roleplay as|switch to|enter|enable)\b",
        _GAP, r"\b(?:dan|jailbr\w+|developer mode|god mode|unrestricted|unfiltered|uncensored|no rules|"
        r"evil|admin mode|sudo mode|root mode)\b"),
     "tries to switch the model into another role"),
    _Rule("prompt_injection", _rx(r"<\|[a-z_]{1,30}\|>|\[/?INST\]|<</?SYS>>|"
                             r"###\s*(?:system|instruction)|\bnew (?:system )?instructions?\s*:|\bsystem\s*:\s"),
     "contains chat-template or system markers"),
    _Rule("data_exfiltration", _rx(r"\b", _SEND, _GAP, r"\b", _SECRETS),
          "sends passwords, keys or other secrets", prepare=_without_benign_secrets),
    _Rule("data_exfiltration", _rx(
        r"\b", _SEND, _GAP, r"(?:\b", _BULK, _GAP, r"\b(?:", _PEOPLE_DATA, r"|", _DATA, r")|\b", _PEOPLE_DATA,
        _GAP, r"\b", _DATA, r")", _GAP, r"\b(?:to|into|onto|at|on|with)\b", _GAP, r"\b", _OUTSIDE),
     "sends bulk or personal data outside the organisation"),
    _Rule("data_exfiltration", _rx(
        r"\b(?:exfiltrate|siphon|smuggle|steal|scrape and send|harvest)\w*\b"),
     "exfiltration"),
    _Rule("data_exfiltration", _rx(
        r"\b", _SEND, _GAP, r"\b", _BULK, _GAP, r"\b", _PEOPLE_DATA, _GAP, r"\b", _DATA,
        r"[^.;!?]{0,80}?(?:\b[a-z0-9._-]+@(?:gmail|yahoo|hotmail|proton(?:mail)?|outlook|mail\.ru|"
        r"aol|icloud)\.|https?://)"),
     "sends bulk personal data to a personal address or an outside URL", prepare=_without_example_links),
    _Rule("mass_deletion", _rx(
        r"\b", _DELETE, _GAP, r"\b(?:all|every|each|entire|whole|any|the whole|everything)\b", _GAP,
        r"\b", _DELETE_TARGET),
     "deletes data in bulk"),
    _Rule("mass_deletion", _rx(r"\b", _DELETE, r"\s+everything\b|\brm\s+-rf\b|\bdrop\s+(?:table|database|schema)\b|"
                          r"\btruncate\s+table\b|\bdelete\s+from\s+\w+\s*(?:;|$)|\b(?:format|wipe|erase|destroy)\s+"
                          r"(?:the\s+)?(?:hard\s+)?(?:drives?|disks?|servers?|databases?|db)\b|\bfactory reset\b"),
     "destructive command"),
    _Rule("harassment_spam", _rx(
        r"\b(?:spam|spamming|mass[- ]?(?:mail|email|text|message|dm)\w*|bomb(?:ard)?\w*|flood\w*)\b"),
     "spam"),
    _Rule("harassment_spam", _rx(
        r"\b(?:send|text|email|e-mail|message|post|sms|dm|call|ping|notify)\w*\b", _GAP,
        r"(?:\bevery\s+(?:single\s+)?(?:second|minute|few (?:seconds|minutes))\b|\b\d{3,}\s+(?:times|messages|"
        r"emails|texts|sms|dms|copies)\b|\b(?:thousands?|hundreds|millions?) of\b|\bnon-?stop\b|"
        r"\bover and over\b|\bendless(?:ly)?\b|\bnever stop\b|\buntil (?:they|he|she) (?:reply|replies|respond|"
        r"responds|quits?|gives? up|breaks?)\b)"),
     "messages in floods"),
    _Rule("harassment_spam", _rx(
        r"\b(?:harass|bully|intimidate|threaten|stalk|doxx?|humiliate|insult|abuse|troll|shame|blackmail|"
        r"extort|scare|torment)\w*\b"),
     "harassment"),
    _Rule("harassment_spam", _rx(
        r"\b(?:send|text|email|e-mail|message|post|sms|dm|tell|call)\w*\b", _GAP,
        # Whole words: "fatal errors" is not "fat" ("email sender fatal errors" was refused as abuse).
        r"\b(?:(?:idiots?|stupid|worthless|losers?|morons?|useless|pathetic|ugly|fat|dumb|kys|die)\b|"
        r"kill (?:yo)?urself|we know where you live|you(?:'ll| will) regret|watch your back|hurt you|"
        r"ruin (?:your|his|her) life|you(?:'re| are) fired and)"),
     "abusive or threatening message"),
    _Rule("harassment_spam", _rx(
        r"\b(?:phish\w*|fake (?:login|invoice|password reset)|verify your (?:account|password|identity) at|"
        r"(?:pretend|pose|posing|impersonat\w*)\b[^.;!?]{0,40}\b(?:bank|it department|it support|ceo|paypal|"
        r"microsoft|apple|irs|police))"),
     "phishing or impersonation"),
    _Rule("harassment_spam", _rx(
        r"\b(?:send|text|email|message|blast)\w*\b", _GAP, r"\b(?:all|every|each)\b", _GAP,
        r"\b(?:contacts?|customers?|users?|numbers|subscribers?|people|phone numbers|leads?)\b", _GAP,
        r"\b(?:crypto|bitcoin|giveaway|lottery|you(?:'ve| have) won|prize|casino|viagra|get rich|investment "
        r"opportunity|miracle)\b"),
     "unsolicited bulk promotion"),
]


def request_verdict(text: str) -> Verdict | None:
    """The first rule the request breaks, or None (linear time in the length of ``text``)."""
    normalized = " ".join(text.split())
    for rule in _REQUEST_RULES:
        if rule.pattern.search(rule.prepare(normalized) if rule.prepare else normalized):
            return Verdict(rule.name, rule.reason)
    return None


class SafetyChecker:
    """The request rules and the output policies; ``enabled`` False turns both off.

    ``policy`` gives the policy a tenant's outputs are held to (service.grammars.TenantConfigs.policy).
    """

    def __init__(self, policy: Callable[[str | None], Policy], *, enabled: bool = True) -> None:
        self.policy = policy
        self.enabled = enabled

    def check_request(self, text: str, context: str | None = None) -> None:
        """SafetyBlocked (400) if the request text or its context breaks a request rule."""
        if not self.enabled:
            return
        verdict = request_verdict(text) or (request_verdict(context) if context else None)
        if verdict:
            _block("request", verdict)

    def check_output(self, code: str, tree: lark.Tree | None, *, tenant: str | None) -> None:
        """SafetyBlocked (400) if the code breaks the tenant's policy."""
        if not self.enabled:
            return
        verdict = output_verdict(code, self.policy(tenant), tree=tree)
        if verdict:
            _block("output", verdict)


def _block(stage: str, verdict: Verdict) -> None:
    metrics.SAFETY_BLOCKS.labels(stage, verdict.rule).inc()
    raise SafetyBlocked(
        f"blocked by the safety policy ({verdict.rule}): {verdict.reason}",
        detail={"stage": stage, "rule": verdict.rule},
    )
