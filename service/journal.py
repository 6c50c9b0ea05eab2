"""The store's change journal: what replicas follow instead of listing everything that was ever published.

Every version written to the store (:meth:`service.store.Versions.publish`) is then recorded as the next line of
the journal, one small JSON object per change::

    journal/000000000001.json     {"kind": "adapters", "owner": "contoso", "name": "crm", "number": 3,
                                   "key": "adapters/contoso/crm/00000003.tar.gz", "size": 19012345,
                                   "meta": {"manifest": {...}, "digest": "..."}}

Numbers are taken create-if-absent, like versions, so two replicas recording at once get consecutive numbers and
the journal has no gaps: a number is taken only after its writer saw the one before it. A replica asks for the
lines after the last it read (S3's ``StartAfter``): a poll costs one listing plus one read per change, whatever
the store holds. Every ``SNAPSHOT_EVERY`` lines a follower writes the whole index as it stands
(``journal-index/<number>.json``), so a replica starting from nothing reads one snapshot and the lines after
it. ``meta`` is what a replica needs to list and route an item without its files (an adapter's manifest and
weights digest); replicas check the files against it when they fetch them, so the journal is not trusted more
than a tenant.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import StoreUnavailable
from service.store import Exists, Kind, Store, Version, version_key

__all__ = ["SNAPSHOT_EVERY", "Journal", "Snapshot"]

_LINES = "journal/"
_SNAPSHOTS = "journal-index/"
#: A snapshot of the index every this many journal lines.
SNAPSHOT_EVERY = 256
#: A line or meta past this is not one we write: skipped.
_MAX_LINE_BYTES = 256 * 1024
_MAX_SNAPSHOT_BYTES = 64 * 2**20


class _Line(BaseModel):
    """One journal line as read back: typed, so a line someone else wrote cannot become anything else."""

    model_config = ConfigDict(extra="ignore")

    kind: Kind
    owner: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    number: int = Field(ge=1, lt=10**8)
    key: str = Field(max_length=1000)
    size: int = Field(ge=0)
    meta: dict[str, Any] = Field(default_factory=dict)

    def version(self) -> Version | None:
        """The version this line records; None when its key is not where that version lives (a line must not
        make one owner's item serve another's content)."""
        if self.key not in {version_key(self.kind, self.owner, self.name, self.number, extension)
                            for extension in ("json", "tar.gz", "deleted")}:
            return None
        return Version(self.kind, self.owner, self.name, self.number, self.size, self.key, meta=self.meta)


class Snapshot(BaseModel):
    """The newest version of every live item as of journal line ``upto``."""

    upto: int
    items: list[_Line]

    def versions(self) -> list[Version]:
        return [v for line in self.items if (v := line.version()) is not None]


class Journal:
    """Record and read the store's changes; every call may block (run it in a thread)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        #: The newest line this process knows exists: where recording and following start looking.
        self.known = 0

    def record(self, version: Version) -> int:
        """Add ``version`` as the next line; its number."""
        body = json.dumps(asdict(version), default=str).encode()
        for _ in range(50):
            number = self.known + 1
            try:
                self.store.create(_line_key(number), body)
            except Exists:
                self._catch_up()
                continue
            self.known = max(self.known, number)
            return number
        raise StoreUnavailable("could not record the change: too many concurrent changes")

    def read_after(self, number: int, *, limit: int = 1000) -> list[tuple[int, Version | None]]:
        """The lines after ``number`` (at most ``limit``), oldest first: each line's number and its version (None
        for a line that is not one this service writes)."""
        found = []
        for obj in self.store.list_after(_LINES, _line_key(number), limit):
            line_number = _number(obj.key, _LINES)
            if line_number is None or line_number <= number:
                continue
            found.append((line_number, _parse(self.store.read(obj.key)) if obj.size <=
                          _MAX_LINE_BYTES else None))
        if found:
            self.known = max(self.known, found[-1][0])
        return found

    def latest_snapshot(self) -> Snapshot | None:
        """The newest readable snapshot, or None (a store with none yet)."""
        keys = sorted((n, o) for o in self.store.list(_SNAPSHOTS)
                      if (n := _number(o.key, _SNAPSHOTS)) is not None and o.size <= _MAX_SNAPSHOT_BYTES)
        for number, obj in reversed(keys):
            try:
                snapshot = Snapshot.model_validate_json(self.store.read(obj.key))
            except ValidationError:
                continue
            if snapshot.upto == number:
                self.known = max(self.known, number)
                return snapshot
        return None

    def write_snapshot(self, upto: int, versions: list[Version]) -> None:
        """The index as of line ``upto`` (another replica may have written it first: that one stays)."""
        key = _line_key(upto, _SNAPSHOTS)
        before = _line_key(upto - 1, _SNAPSHOTS)
        if any(o.key == key for o in self.store.list_after(_SNAPSHOTS, before, 1)):
            return  # written already: not sent again by every replica
        items = [asdict(v) for v in versions if not v.deleted]
        body = json.dumps({"upto": upto, "items": items}, default=str).encode()
        with contextlib.suppress(Exists):
            self.store.create(key, body)

    def _catch_up(self) -> None:
        """Learn the newest line (after a number was taken by another writer)."""
        while batch := self.store.list_after(_LINES, _line_key(self.known), 1000):
            numbers = [n for o in batch if (n := _number(o.key, _LINES)) is not None]
            if not numbers or max(numbers) <= self.known:
                return
            self.known = max(numbers)


def _line_key(number: int, prefix: str = _LINES) -> str:
    return f"{prefix}{number:012d}.json"


def _number(key: str, prefix: str) -> int | None:
    stem = key[len(prefix):].removesuffix(".json") if key.startswith(prefix) else ""
    return int(stem) if len(stem) == 12 and stem.isdigit() else None


def _parse(data: bytes) -> Version | None:
    try:
        return _Line.model_validate_json(data).version()
    except ValidationError:
        return None
