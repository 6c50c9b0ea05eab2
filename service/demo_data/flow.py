"""Synthetic NL -> flow pairs: deterministic, varied phrasing, test split by held-out trigger/action pairs.

Every pair is built from the catalog operation's phrasing templates below: the template decides which
optional parameters are mentioned, values are drawn from small pools and rendered in the sentence in one of
several ways (``9am`` / ``09:00``), and the sentence gets a random politeness prefix, word order, joiners
and, sometimes, a typo in a non-value word. The code is the one canonical spelling the grammar allows.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from service.grammars import Catalog, Operation

__all__ = ["ACTIONS", "TENANT_ACTIONS", "TENANT_TRIGGERS", "TRIGGERS", "FlowGenerator", "FlowPair"]


@dataclass(frozen=True)
class FlowPair:
    text: str
    code: str
    ops: tuple[str, ...]  # trigger first, then actions


# --- phrasing: op -> templates; {param} marks a value, the template mentions exactly the params it uses ---
TRIGGERS: dict[str, list[str]] = {
    "forms.submitted": ["when someone submits the {form} form", "whenever the {form} form is submitted",
                        "on every new {form} form submission", "each time a {form} form comes in"],
    "schedule.daily": ["every day at {at}", "daily at {at}", "each day at {at}"],
    "schedule.weekly": ["every {day} at {at}", "each {day} at {at}", "weekly on {day} at {at}"],
    "schedule.hourly": ["every hour", "hourly", "once an hour"],
    "email.received": ["when an email arrives from {from}", "whenever I get an email from {from}",
                       "when an email with {subject_contains} in the subject arrives",
                       "when {from} sends an email about {subject_contains}", "whenever a new email comes in"],
    "chat.message_posted": ["when a message is posted in {channel}", "whenever someone writes in {channel}",
                            "when a message mentioning {contains} is posted in {channel}"],
    "files.file_added": ["when a file is added to {folder}", "whenever a new file lands in {folder}",
                         "when someone uploads a file to {folder}"],
    "tickets.ticket_created": ["when a ticket is created in {project}", "whenever a new {project} ticket is opened",
                               "when a {priority} priority ticket is created in {project}"],
    "sheets.row_added": ["when a row is added to the {sheet} sheet", "whenever {sheet} gets a new row",
                         "on each new row in {sheet}"],
    "http.webhook": ["when the webhook {path} is called", "whenever {path} receives a webhook",
                     "on a webhook call to {path}"],
    "calendar.event_starting": ["when an event in the {calendar} calendar starts",
                                "{minutes_before} minutes before events in the {calendar} calendar",
                                "before each {calendar} meeting"],
    "github.pull_request_opened": ["when a pull request is opened in {repo}", "whenever someone opens a PR on {repo}"],
    "github.issue_opened": ["when an issue is opened in {repo}", "whenever a new issue is filed on {repo}"],
    "payments.payment_received": ["when a payment is received", "when a payment of at least {min_amount} comes in",
                                  "whenever we receive a payment over {min_amount}"],
    "payments.refund_requested": ["when a refund is requested", "whenever a customer asks for a refund"],
}
ACTIONS: dict[str, list[str]] = {
    "email.send": ['email {to} with the subject "{subject}"', 'send an email to {to} titled "{subject}"',
                   'send {to} an email "{subject}" saying "{body}"', 'mail {to} "{subject}"'],
    "chat.post_message": ['post "{text}" to {channel}', 'send "{text}" to {channel}', 'notify {channel} with "{text}"',
                          'tell {channel} "{text}"'],
    "chat.direct_message": ['DM {user} "{text}"', 'send a direct message to {user} saying "{text}"'],
    "files.upload": ['upload a file named "{name}" to {folder}', 'save "{name}" into {folder}'],
    "files.copy": ["copy {source} to {destination}", "make a copy of {source} in {destination}"],
    "tickets.create_ticket": ['create a ticket "{title}" in {project}', 'file a ticket in {project} called "{title}"',
                              'open a {priority} priority ticket in {project} titled "{title}"'],
    "tickets.close_ticket": ["close ticket {id} in {project}", "resolve ticket {id} of the {project} project"],
    "sheets.append_row": ['add a row "{values}" to the {sheet} sheet', 'append "{values}" to {sheet}'],
    "sheets.update_cell": ['set cell {cell} of {sheet} to "{value}"',
                           'update {cell} in the {sheet} sheet with "{value}"'],
    "http.request": ["send a {method} request to {url}", "call {url} with {method}",
                     '{method} to {url} with the body "{body}"'],
    "calendar.create_event": ['create an event "{title}" at {at} in the {calendar} calendar',
                              'schedule "{title}" at {at} on the {calendar} calendar'],
    "sms.send_sms": ['text {to} "{text}"', 'send an SMS to {to} saying "{text}"'],
    "tasks.add_task": ['add a task "{title}" to my {list} list', 'create a to-do "{title}" in {list} due {due}',
                       'put "{title}" on the {list} list'],
    "tasks.complete_task": ['mark "{title}" as done in {list}', 'complete the task "{title}" on the {list} list'],
    "github.comment": ['comment "{text}" on issue {number} in {repo}',
                       'leave a comment on {repo} issue {number} saying "{text}"'],
    "payments.refund": ["refund payment {payment_id}", "issue a refund for payment {payment_id}"],
    "log.write": ['log "{message}"', 'write "{message}" to the log', 'add a {level} log entry "{message}"'],
}
# Private connectors of the two demo tenants (grammars/tenants/*.yaml), phrased in each tenant's own words.
TENANT_TRIGGERS: dict[str, dict[str, list[str]]] = {
    "contoso": {
        "crm.deal_won": ["when a deal is won in the {pipeline} pipeline", "whenever we close a {pipeline} opportunity",
                         "when an opportunity in {pipeline} is marked won"],
        "crm.lead_created": ["when a new lead comes in", "whenever a lead is created from {source}",
                             "when marketing captures a lead via {source}"],
    },
    "fabrikam": {
        "erp.invoice_approved": ["when an invoice is approved", "when an invoice over {min_total} gets approved",
                                 "whenever finance signs off an invoice above {min_total}"],
        "erp.stock_low": ["when stock of {item} runs low", "whenever {item} inventory drops below the minimum",
                          "when we are running out of {item}"],
    },
}
TENANT_ACTIONS: dict[str, dict[str, list[str]]] = {
    "contoso": {
        "crm.create_lead": ['create a lead "{name}" with email {email}', 'add "{name}" ({email}) as a CRM lead',
                            'log a new prospect "{name}" at {email}'],
        "crm.update_deal": ['move the deal "{deal}" to {stage}', 'set deal "{deal}" to stage {stage}',
                            'advance opportunity "{deal}" to {stage}'],
        "crm.assign_owner": ['assign lead "{lead}" to {owner}', 'make {owner} the owner of "{lead}"'],
    },
    "fabrikam": {
        "erp.create_purchase_order": ['order {quantity} {item} from {supplier}',
                                      'raise a purchase order for {quantity} {item} with {supplier}',
                                      'create a PO to {supplier} for {quantity} units of {item}'],
        "erp.post_invoice": ['invoice {customer} {amount}', 'post an invoice of {amount} to {customer}',
                             'bill {customer} for {amount}'],
    },
}

# --- values: code value and how a sentence may say it ---
_POOLS: dict[str, list[str]] = {
    "form": ["Contact us", "Job application", "Feedback", "Event signup", "Newsletter", "Support request",
             "Demo request", "Survey", "Partner", "Returns"],
    "channel": ["#sales", "#support", "#marketing", "#ops", "#general", "#finance", "#dev", "#alerts", "#oncall",
                "#hr", "#leads", "#deploys"],
    "email": [f"{n}@{d}" for n in ("sales", "support", "ops", "boss", "team", "hr", "finance", "alice", "bob",
                                   "carol", "dave", "it") for d in ("example.com", "acme.io", "mail.org")],
    "folder": ["/invoices", "/reports", "/uploads", "/contracts", "/archive", "/photos", "/backups/daily",
               "/shared/team", "/receipts", "/archive/invoices", "/exports"],
    "project": ["Support", "Billing", "Ops", "Website", "Mobile", "Infra", "Sales", "Security"],
    "sheet": ["Leads", "Orders", "Expenses", "Inventory", "Signups", "Weekly", "Budget", "Contacts"],
    "repo": ["acme/web", "acme/api", "acme/mobile", "tools/cli", "data/pipeline"],
    "calendar": ["Team", "Sales", "Personal", "Board", "Support", "Marketing"],
    "list": ["Sales", "Personal", "Ops", "Groceries", "Hiring", "Launch"],
    "url": ["https://hooks.example.com/build", "https://api.acme.io/v1/orders", "https://ci.example.com/deploy",
            "https://status.acme.io/ping", "https://crm.example.com/api/leads"],
    "path": ["/deploy", "/orders", "/signup", "/alerts", "/github", "/stripe"],
    "phone": ["+15551234567", "+4915112345678", "+447700900123", "+33612345678"],
    "text": ["New lead", "Form received", "Build started", "Invoice archived", "Payment received", "Heads up",
             "New signup", "Deploy finished", "Please review", "Meeting soon", "Outage reported", "Refund requested",
             "Weekly report is ready", "New order", "Check the dashboard", "Welcome aboard", "Server is down",
             "Ticket escalated", "Daily standup", "Sales call booked"],
    "word": ["urgent", "invoice", "outage", "refund", "hiring", "release", "contract", "order"],
    "cell": ["A1", "B2", "C10", "D4", "E7"],
    "payment_id": ["pay_1042", "pay_2231", "pay_9001", "ch_7781", "pay_5120"],
    "level": ["info", "warning", "error", "debug"],
    "pipeline": ["Enterprise", "SMB", "Renewals", "Partners", "EMEA"],
    "source": ["webinar", "website", "trade show", "referral", "ads"],
    "stage": ["Negotiation", "Proposal", "Closed Won", "Discovery", "Contract"],
    "person": ["Jane Doe", "John Smith", "Ana Silva", "Li Wei", "Omar Haddad", "Eva Novak", "Raj Patel"],
    "deal": ["Acme renewal", "Globex expansion", "Initech pilot", "Umbrella upgrade", "Hooli rollout"],
    "item": ["steel bolts", "copper wire", "pallets", "printer paper", "safety gloves", "motor oil"],
    "supplier": ["Northwind", "Tailspin", "Litware", "Proseware", "Wingtip"],
    "customer": ["Adatum", "Fourth Coffee", "Lamna", "Margie Travel", "Trey Research"],
    "filename": ["report.pdf", "invoice.csv", "notes.txt", "summary.docx", "export.json", "photo.jpg"],
}
_PARAM_POOL = {"form": "form", "channel": "channel", "from": "email", "to": "email", "user": "email",
               "folder": "folder", "source": "folder", "destination": "folder", "project": "project",
               "sheet": "sheet", "repo": "repo", "calendar": "calendar", "list": "list", "url": "url", "path": "path",
               "subject": "text", "body": "text", "text": "text", "title": "text", "name": "text", "values": "text",
               "value": "text", "message": "text", "subject_contains": "word", "contains": "word", "cell": "cell",
               "payment_id": "payment_id", "level": "level", "pipeline": "pipeline", "stage": "stage",
               "email": "email", "owner": "email", "lead": "person", "deal": "deal", "item": "item",
               "supplier": "supplier", "customer": "customer",
               # the same parameter name meaning another thing in one operation
               "files.upload.name": "filename", "crm.create_lead.name": "person", "crm.lead_created.source": "source"}
_HOURS = [(7, 45), (8, 0), (8, 30), (9, 0), (9, 30), (12, 0), (13, 15), (17, 0), (18, 30), (22, 0)]
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]

_PREFIXES = ["", "", "", "please ", "could you ", "I want to ", "I'd like to ", "can you ", "hey, ", "automatically "]
_SUFFIXES = ["", "", "", " please", ", thanks", ".", "!"]
_JOINERS = [", then ", " and then ", ", ", " and ", ". Then ", "; ", ", also "]


def _time_nl(rng: random.Random, hour: int, minute: int) -> str:
    choices = [f"{hour:02d}:{minute:02d}", f"{hour}:{minute:02d}"]
    if minute == 0:
        h12 = hour % 12 or 12
        choices += [f"{h12}{'am' if hour < 12 else 'pm'}", f"{h12} {'am' if hour < 12 else 'pm'}"]
        if hour == 12:
            choices.append("noon")
    return rng.choice(choices)


def _value(rng: random.Random, op: str, param: str, type_: str) -> tuple[str, str]:
    """(code spelling, sentence spelling) of one parameter value."""
    if type_ == "time":
        hour, minute = rng.choice(_HOURS)
        return f'"{hour:02d}:{minute:02d}"', _time_nl(rng, hour, minute)
    if type_ == "weekday":
        day = rng.choice(_WEEKDAYS)
        return day, rng.choice([day, day.capitalize()])
    if type_ == "priority":
        p = rng.choice(["low", "normal", "high", "urgent"])
        return p, p
    if type_ == "method":
        m = rng.choice(["GET", "POST", "PUT", "DELETE"])
        return m, rng.choice([m, m.lower()])
    if type_ == "number":
        n = str(rng.choice([5, 10, 15, 30, 50, 100, 250, 500, 1000, 42, 7, 12, 2500]))
        return n, n
    if param == "to" and type_ == "text":  # sms recipients are phone numbers
        phone = rng.choice(_POOLS["phone"])
        return f'"{phone}"', phone
    pool = _POOLS[_PARAM_POOL.get(f"{op}.{param}") or _PARAM_POOL.get(param, "text")]
    value = rng.choice(pool)
    return f'"{value}"', value


def _typo(rng: random.Random, template: str) -> str:
    """One typo in a word of the template that is not a placeholder (values stay exact)."""
    words = [m for m in re.finditer(r"(?<![{\w])[a-z]{5,}(?![}\w])", template)]
    if not words:
        return template
    m = rng.choice(words)
    w = m.group(0)
    i = rng.randrange(1, len(w) - 1)
    kind = rng.randrange(3)
    new = w[:i] + w[i + 1] + w[i] + w[i + 2:] if kind == 0 else w[:i] + w[i + 1:] if kind == 1 else w[:i] + w[i] + w[i:]
    return template[: m.start()] + new + template[m.end():]


class FlowGenerator:
    """Pairs over a catalog; ``templates`` = general phrasing plus, for a tenant, its private connectors."""

    def __init__(self, catalog: Catalog, *, tenant: str | None = None) -> None:
        self.catalog = catalog
        self.triggers = dict(TRIGGERS)
        self.actions = dict(ACTIONS)
        self.tenant_ops: set[str] = set()
        if tenant:
            self.triggers.update(TENANT_TRIGGERS[tenant])
            self.actions.update(TENANT_ACTIONS[tenant])
            self.tenant_ops = set(TENANT_TRIGGERS[tenant]) | set(TENANT_ACTIONS[tenant])
        for name in list(self.triggers) + list(self.actions):
            if catalog.find(name) is None:
                raise ValueError(f"phrasing for {name}, which the catalog does not have")

    def pair(self, rng: random.Random, trigger: str, actions: list[str]) -> FlowPair:
        trigger_code, trigger_nl = self._call(rng, trigger, self.triggers[trigger])
        calls = [self._call(rng, a, self.actions[a]) for a in actions]
        code = "\n".join([f"when {trigger_code}"] + [f"then {c}" for c, _ in calls])
        action_nl = [nl for _, nl in calls]
        joined = action_nl[0]
        for i, nl in enumerate(action_nl[1:], start=1):
            joiner = rng.choice(_JOINERS) if i < len(action_nl) - 1 else rng.choice([" and ", ", then ", " and then "])
            joined += joiner + nl
        action_first = len(actions) == 1 and rng.random() < 0.35  # "post ... whenever ..."
        text = f"{joined} {trigger_nl}" if action_first else f"{trigger_nl}, {joined}"
        text = rng.choice(_PREFIXES) + text + rng.choice(_SUFFIXES)
        if rng.random() < 0.5:
            text = text[0].upper() + text[1:]
        return FlowPair(text=text, code=code, ops=(trigger, *actions))

    def _call(self, rng: random.Random, name: str, templates: list[str]) -> tuple[str, str]:
        op: Operation = self.catalog.find(name)  # type: ignore[assignment]
        template = rng.choice(templates)
        if rng.random() < 0.08:
            template = _typo(rng, template)
        mentioned = set(re.findall(r"{(\w+)}", template))
        missing = [p.name for p in op.params if p.required and p.name not in mentioned]
        assert not missing, f"template {template!r} of {name} leaves out required {missing}"
        code_args, nl_values = [], {}
        for p in op.params:
            if p.name in mentioned:
                code_value, nl_value = _value(rng, name, p.name, p.type)
                code_args.append(f"{p.name}: {code_value}")
                nl_values[p.name] = nl_value
        return f"{name}({', '.join(code_args)})", template.format(**nl_values)

    def sample_ops(self, rng: random.Random, *, require_tenant_op: bool = False) -> tuple[str, list[str]]:
        n = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        trigger = rng.choice(sorted(self.triggers))
        actions = [rng.choice(sorted(self.actions)) for _ in range(n)]
        if require_tenant_op and not ({trigger, *actions} & self.tenant_ops):
            tenant_actions = sorted(self.tenant_ops & set(self.actions))
            actions[rng.randrange(n)] = rng.choice(tenant_actions)
        return trigger, actions

    def generate(self, *, n: int, seed: int, held_out: set[tuple[str, str]], test: bool,
                 require_tenant_op: bool = False, exclude_texts: set[str] = frozenset()) -> Iterator[FlowPair]:
        """``n`` distinct pairs; test pairs contain a held-out (trigger, action) pair, train pairs none."""
        rng = random.Random(seed)
        seen: set[str] = set()
        made = 0
        while made < n:
            trigger, actions = self.sample_ops(rng, require_tenant_op=require_tenant_op)
            has_held_out = any((trigger, a) in held_out for a in actions)
            if has_held_out != test:
                if test:  # steer toward a held-out pair instead of rejecting almost everything
                    pair = rng.choice(sorted(held_out))
                    trigger, actions[0] = pair
                else:
                    continue
            p = self.pair(rng, trigger, actions)
            if p.text in seen or p.text in exclude_texts:
                continue
            seen.add(p.text)
            made += 1
            yield p


def held_out_pairs(triggers: list[str], actions: list[str], *, fraction: float, seed: int,
                   keep: Callable[[str, str], bool] = lambda t, a: True) -> set[tuple[str, str]]:
    """A fixed random subset of (trigger, action) combinations that only the test split uses."""
    rng = random.Random(seed)
    pairs = [(t, a) for t in sorted(triggers) for a in sorted(actions) if keep(t, a)]
    return set(rng.sample(pairs, max(1, int(len(pairs) * fraction))))
