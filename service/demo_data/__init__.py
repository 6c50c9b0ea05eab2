"""Synthetic NL -> DSL pairs for the demo DSLs shipped in grammars/: deterministic generators (fixed seeds).

- :mod:`.datasets`: ``nl2dsl data`` writes ``data/<dsl>/{train,test}.jsonl`` (flow, sql, tenant sets) from
  :mod:`.flow` and :mod:`.sql`, and reads them back;
- :mod:`.cron`, :mod:`.logq`, :mod:`.shop`: the onboarding demos' pairs (``python -m service.demo_data.cron``),
  sharing :mod:`.pairs` (draw, roughen, write JSONL).

The trainer (service.training) reads whatever pairs it is given; nothing here is used to serve requests.
"""
