"""The durable store of what tenants publish (DSLs and adapters), shared by every replica.

Two backends behind one small interface (list, read, create-if-absent): a local directory (the embedded
default, nothing to set up; replicas on one machine share it) and an S3-compatible bucket (production; boto3,
the AWS SDK, which every S3-protocol server speaks). On top, :class:`Versions` keeps immutable, numbered
versions of each item::

    <kind>/<owner>/<name>/00000001.json          kind "dsls": the DSL as published (JSON)
    <kind>/<owner>/<name>/00000002.tar.gz        kind "adapters": the PEFT folder (tar.gz)
    <kind>/<owner>/<name>/00000003.deleted       a deletion (empty); a later version brings the item back

``owner`` is the tenant, or ``_shared`` for an admin's. The highest version is the current one; a rollback
publishes an earlier version's content again (through the owner's gate, :mod:`service.publishing`), so history
is never rewritten. Versions are created only if
absent (S3's ``If-None-Match: *``, ``O_EXCL`` on a directory), so two replicas publishing at once cannot
overwrite each other: the second takes the next number.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlparse

from service.errors import StoreUnavailable

__all__ = ["SHARED", "DirectoryStore", "Exists", "Kind", "S3Store", "Store", "StoreUnavailable", "Version", "Versions",
           "open_store", "owner_key", "tenant_of", "version_key"]

class Kind(StrEnum):
    """What an item in the store is: the first segment of its keys."""

    DSLS = "dsls"
    ADAPTERS = "adapters"


#: The owner segment of what an admin publishes for every tenant.
SHARED = "_shared"


def owner_key(tenant: str | None) -> str:
    """The owner segment for what ``tenant`` publishes (None: an admin, for everyone)."""
    return tenant if tenant is not None else SHARED


def tenant_of(owner: str) -> str | None:
    return None if owner == SHARED else owner
_VERSION = re.compile(r"^(\d{8})\.(json|tar\.gz|deleted)$")


class Exists(Exception):
    """A create-if-absent found the key taken."""


@dataclass(frozen=True)
class Object:
    key: str
    size: int


class Store(Protocol):
    def list(self, prefix: str) -> list[Object]: ...

    def list_after(self, prefix: str, after: str, limit: int) -> list[Object]:
        """Up to ``limit`` keys under ``prefix`` that sort after ``after``, in order (the journal's poll)."""

    def read(self, key: str) -> bytes: ...

    def create(self, key: str, data: bytes) -> None:
        """Write ``key`` only if it does not exist yet; :class:`Exists` otherwise."""


def _translating(cls):
    """``cls``'s store calls raise the store's own errors (network, permissions, disk: boto3 and the file system
    raise many kinds) as StoreUnavailable (503), here at the seam, once for every caller; Exists passes through."""
    for name in ("list", "list_after", "read", "create"):
        call = getattr(cls, name)

        @functools.wraps(call)
        def translated(self, *args, _call=call, **kwargs):
            try:
                return _call(self, *args, **kwargs)
            except (Exists, StoreUnavailable):
                raise
            except Exception as exc:
                raise StoreUnavailable(f"the store is unavailable: {type(exc).__name__}") from exc

        setattr(cls, name, translated)
    return cls


@_translating
class DirectoryStore:
    """A folder: keys are relative paths. Creating writes a temporary file and links it in (atomic, exclusive)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def list(self, prefix: str) -> list[Object]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return [Object(p.relative_to(self.root).as_posix(), p.stat().st_size)
                for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")]

    def list_after(self, prefix: str, after: str, limit: int) -> list[Object]:
        """One folder's names, sorted: the names are read, only the ``limit`` returned are looked at."""
        folder = self.root / prefix
        if not folder.is_dir():
            return []
        names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and prefix + n > after)[:limit]
        return [Object(prefix + n, (folder / n).stat().st_size) for n in names if (folder / n).is_file()]

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def create(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        temporary.write_bytes(data)
        try:
            os.link(temporary, path)  # fails if the key exists: readers never see half a version
        except FileExistsError:
            raise Exists(key) from None
        finally:
            temporary.unlink(missing_ok=True)


@_translating
class S3Store:
    """A bucket (and key prefix) on any S3-protocol server; ``endpoint_url`` for one that is not AWS."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._s3 = boto3.client("s3", endpoint_url=endpoint_url,
                                config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}))

    def list(self, prefix: str) -> list[Object]:
        found = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                       Prefix=self.prefix + prefix):
            found += [Object(o["Key"][len(self.prefix):], o["Size"]) for o in page.get("Contents", [])]
        return found

    def list_after(self, prefix: str, after: str, limit: int) -> list[Object]:
        page = self._s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + prefix,
                                        StartAfter=self.prefix + after, MaxKeys=limit)
        return [Object(o["Key"][len(self.prefix):], o["Size"]) for o in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def create(self, key: str, data: bytes) -> None:
        from botocore.exceptions import ClientError

        try:
            self._s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise Exists(key) from exc
            raise


def open_store(spec: str, *, endpoint_url: str | None = None) -> Store:
    """``s3://bucket/prefix`` or a folder (``dir:/path`` or a plain path)."""
    if spec.startswith("s3://"):
        parsed = urlparse(spec)
        return S3Store(parsed.netloc, parsed.path, endpoint_url=endpoint_url)
    return DirectoryStore(Path(spec.removeprefix("dir:")))


@dataclass(frozen=True)
class Version:
    """One version of one item: its :class:`Kind`, ``owner`` a tenant or :data:`SHARED`."""

    kind: Kind
    owner: str
    name: str
    number: int
    size: int
    key: str
    #: What a replica needs to list and route the item without its content (the journal carries it).
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def deleted(self) -> bool:
        return self.key.endswith(".deleted")


def version_key(kind: Kind, owner: str, name: str, number: int, extension: str) -> str:
    """Where version ``number`` of an item lives (``extension``: json, tar.gz or deleted)."""
    return f"{kind}/{quote(owner, safe='')}/{quote(name, safe='')}/{number:08d}.{extension}"


class Versions:
    """Numbered, immutable versions of items in a :class:`Store`; every call may block (run it in a thread)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def scan(self, kind: Kind) -> dict[tuple[str, str], list[Version]]:
        """Every ``(owner, name)`` of ``kind`` with its versions, oldest first."""
        items: dict[tuple[str, str], list[Version]] = {}
        for obj in self.store.list(f"{kind}/"):
            parts = obj.key.split("/")
            match = _VERSION.match(parts[-1]) if len(parts) == 4 else None
            if match:
                owner, name = unquote(parts[1]), unquote(parts[2])
                items.setdefault((owner, name), []).append(
                    Version(Kind(kind), owner, name, int(match.group(1)), obj.size, obj.key))
        for versions in items.values():
            versions.sort(key=lambda v: v.number)
        return items

    def history(self, kind: Kind, owner: str, name: str) -> list[Version]:
        """The versions of one item, oldest first."""
        prefix = f"{kind}/{quote(owner, safe='')}/{quote(name, safe='')}/"
        found = []
        for obj in self.store.list(prefix):
            match = _VERSION.match(obj.key[len(prefix):])
            if match:
                found.append(Version(Kind(kind), owner, name, int(match.group(1)), obj.size, obj.key))
        return sorted(found, key=lambda v: v.number)

    def live_names(self, kind: Kind, owner: str) -> set[str]:
        """The items of ``kind`` that ``owner`` has whose newest version is not a deletion."""
        newest: dict[str, tuple[int, bool]] = {}
        for obj in self.store.list(f"{kind}/{quote(owner, safe='')}/"):
            parts = obj.key.split("/")
            match = _VERSION.match(parts[-1]) if len(parts) == 4 else None
            if match:
                number = int(match.group(1))
                name = unquote(parts[2])
                if number > newest.get(name, (0, False))[0]:
                    newest[name] = (number, match.group(2) == "deleted")
        return {name for name, (_, deleted) in newest.items() if not deleted}

    def owner_bytes(self, owner: str) -> int:
        """What ``owner`` stores, every version of every item counted."""
        return sum(o.size for kind in ("dsls", "adapters")
                   for o in self.store.list(f"{kind}/{quote(owner, safe='')}/"))

    def read(self, version: Version) -> bytes:
        return self.store.read(version.key)

    def publish(self, kind: Kind, owner: str, name: str, data: bytes | None, *, suffix: str,
                meta: dict[str, Any] | None = None) -> Version:
        """Write ``data`` as the next version (None: a deletion); the next number again if another replica won."""
        for _ in range(20):
            history = self.history(kind, owner, name)
            number = history[-1].number + 1 if history else 1
            key = version_key(kind, owner, name, number, "deleted" if data is None else suffix)
            try:
                self.store.create(key, data or b"")
            except Exists:
                continue
            return Version(Kind(kind), owner, name, number, len(data or b""), key, meta=meta or {})
        raise StoreUnavailable(f"could not publish {kind[:-1]} {name!r}: too many concurrent versions")
