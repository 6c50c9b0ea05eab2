"""An adapter archive (``.tar.gz``) unpacked as a stream, stopping at the first bound it passes.

The tar format is read here, block by block, not by ``tarfile``: Python 3.11.7's ``tarfile`` parses PAX
headers with a quadratic regex (a published CVE, fixed in 3.11.10), and 200,000 digits in a 365-byte
``.tar.gz`` held the interpreter, and so every tenant's requests, for 84 s (docs/SECURITY.md, 16). Every step
below is linear in what it reads, and what it reads is bounded:

- the decompressed stream itself is metered (every byte, headers and PAX records included): at most
  ``max_bytes``, and at most ``max_ratio`` times the archive's own size (``getmembers()`` once decompressed
  8 GiB of zeros from 8 MB before counting anything);
- at most ``max_members`` members (files, folders, anything else), and at most ``_MAX_EXTENDED`` bytes of
  PAX records or GNU long names before each, in at most ``_MAX_EXTENDED_HEADERS`` such headers;
- regular files and folders only (no links, devices, FIFOs or sparse files), at the top or one folder down;
- only the adapter's files are written (``manifest.yaml``, ``adapter_config.json``,
  ``adapter_model.safetensors``), by name into the target folder: no path from the archive is used.

What a tenant uploads is unpacked by :func:`unpack_confined`: in a child process (forked from a server of
processes that has imported only this module), killed past a time bound, so that no parse, ours or the
libraries' under it, can hold the serving process and its interpreter.
"""

from __future__ import annotations

import gzip
import io
import multiprocessing
import zlib
from pathlib import Path, PurePosixPath

__all__ = ["ADAPTER_FILES", "ArchiveRefused", "unpack", "unpack_confined"]

ADAPTER_FILES = frozenset({"manifest.yaml", "adapter_config.json", "adapter_model.safetensors"})

_BLOCK = 512
#: PAX records or a GNU long name before one member: a path and a few attributes take a few hundred bytes
#: (macOS's tar adds extended attributes, a few kB); this is far past that and far below what is slow to read.
_MAX_EXTENDED = 64 * 1024
_MAX_EXTENDED_HEADERS = 4
_REGULAR, _FOLDER = frozenset({b"0", b"\0", b"7"}), b"5"
_PAX, _PAX_GLOBAL, _GNU_NAME, _GNU_LINK = b"x", b"g", b"L", b"K"


class ArchiveRefused(ValueError):
    """The archive is not one this service unpacks; the message says which bound or rule."""


class _Metered(io.RawIOBase):
    """The decompressed stream, refusing to give more than ``limit`` bytes."""

    def __init__(self, source: io.BufferedIOBase, limit: int) -> None:
        self._source = source
        self._limit = limit
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 - io's signature
        wanted = min(len(buffer), self._limit - self.read_bytes + 1)
        data = self._source.read(wanted)
        self.read_bytes += len(data)
        if self.read_bytes > self._limit:
            raise ArchiveRefused(f"it unpacks to more than {self._limit} bytes")
        buffer[: len(data)] = data
        return len(data)


def unpack(data: bytes, folder: Path, *, max_members: int = 16, max_bytes: int, max_ratio: float = 50.0) -> None:
    """Write the adapter files of the ``.tar.gz`` ``data`` into ``folder`` (which exists and is empty)."""
    limit = int(min(max_bytes, max(max_ratio * len(data), 1 << 20)))
    stream = io.BufferedReader(_Metered(gzip.GzipFile(fileobj=io.BytesIO(data)), limit), 1 << 16)
    try:
        _unpack(stream, folder, max_members=max_members, limit=limit)
    except ArchiveRefused:
        raise
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise ArchiveRefused(f"it is not a .tar.gz ({type(exc).__name__})") from None


def unpack_confined(data: bytes, folder: Path, *, max_bytes: int, timeout_s: float) -> None:
    """:func:`unpack` in a child process; ArchiveRefused if it fails, or takes longer than ``timeout_s``."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # each child is a fork of a process that imported only this
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(target=_unpack_child, args=(data, str(folder), max_bytes, sending), daemon=True,
                            name="nl2dsl-unpack")
    child.start()
    sending.close()
    try:
        if not receiving.poll(timeout_s):
            raise ArchiveRefused(f"it took longer than {timeout_s:g} s to unpack")
        error = receiving.recv()
    except EOFError:
        error = "it could not be unpacked (the unpacking process ended)"
    finally:
        receiving.close()
        if child.is_alive():
            child.kill()
        child.join()
    if error is not None:
        raise ArchiveRefused(error)


def _unpack_child(data: bytes, folder: str, max_bytes: int, sending) -> None:  # noqa: ANN001 - a Connection
    try:
        unpack(data, Path(folder), max_bytes=max_bytes)
        sending.send(None)
    except ArchiveRefused as exc:
        sending.send(str(exc))


def _unpack(stream: io.BufferedReader, folder: Path, *, max_members: int, limit: int) -> None:
    members, extended, name, size = 0, 0, None, None  # name and size: a PAX or GNU header's, for the next member
    while (header := stream.read(_BLOCK)) and header != bytes(_BLOCK):
        if len(header) < _BLOCK:
            raise ArchiveRefused("it is not a .tar.gz (cut short)")
        _check_sum(header)
        kind, length = header[156:157], _number(header[124:136])
        if kind in (_PAX, _PAX_GLOBAL, _GNU_NAME, _GNU_LINK):
            extended += 1
            if extended > _MAX_EXTENDED_HEADERS or length > _MAX_EXTENDED:
                raise ArchiveRefused(f"it has a PAX or long-name header over {_MAX_EXTENDED} bytes, or more than "
                                     f"{_MAX_EXTENDED_HEADERS} of them before one member")
            payload = _read_padded(stream, length)
            if kind == _PAX:
                records = _pax_records(payload)
                name = records.get("path", name)
                size = _number_text(records["size"]) if "size" in records else size
            elif kind == _GNU_NAME:
                name = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        members += 1
        if members > max_members:
            raise ArchiveRefused(f"it holds more than {max_members} members")
        path = PurePosixPath(name if name is not None else _header_name(header))
        length = size if size is not None else length
        extended, name, size = 0, None, None
        if kind == _FOLDER:
            _read_padded(stream, length, keep=False)
            continue
        if kind not in _REGULAR:
            raise ArchiveRefused("it holds something other than files and folders (a link or device)")
        if path.is_absolute() or ".." in path.parts or not path.parts \
                or len(path.parts) > 2 + (path.parts[0] == "."):
            raise ArchiveRefused("its files must be at its top or in one folder")
        if length > limit:
            raise ArchiveRefused(f"it unpacks to more than {limit} bytes")
        if path.name not in ADAPTER_FILES:
            _read_padded(stream, length, keep=False)  # a README and the like: read past, never written
            continue
        target = folder / path.name
        if target.exists():
            raise ArchiveRefused(f"it holds {path.name} twice")
        with target.open("wb") as out:
            _read_padded(stream, length, into=out)


def _read_padded(stream: io.BufferedReader, length: int, *, keep: bool = True, into=None) -> bytes:  # noqa: ANN001
    """``length`` bytes of member data and the padding to the next block: returned, written ``into`` a file,
    or read past (``keep`` False)."""
    kept, done, total = [], 0, length + (-length % _BLOCK)
    while done < total:
        chunk = stream.read(min(total - done, 1 << 20))
        if not chunk:
            raise ArchiveRefused("it is not a .tar.gz (cut short)")
        useful = chunk[: max(0, length - done)]
        done += len(chunk)
        if into is not None:
            into.write(useful)
        elif keep:
            kept.append(useful)
    return b"".join(kept)


def _check_sum(header: bytes) -> None:
    stored = _number(header[148:156])
    blanked = header[:148] + b" " * 8 + header[156:]
    if stored not in (sum(blanked), sum(b - 256 if b > 127 else b for b in blanked)):
        raise ArchiveRefused("it is not a .tar.gz (a header's checksum is wrong)")


def _number(field: bytes) -> int:
    """A header's number: octal digits, or GNU's base-256 (first byte 0x80)."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits:
        return 0
    if len(digits) > 12 or not all(48 <= d <= 55 for d in digits):
        raise ArchiveRefused("it is not a .tar.gz (a header's number is not octal)")
    return int(digits, 8)


def _number_text(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise ArchiveRefused("it is not a .tar.gz (a PAX size is not a number)")
    return int(text)


def _header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar" and (prefix := header[345:500].split(b"\0", 1)[0]):
        name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax_records(payload: bytes) -> dict[str, str]:
    """PAX records (``"<length> <key>=<value>\\n"`` each), read in one pass; sparse files are refused."""
    records, at = {}, 0
    while at < len(payload) and payload[at] != 0:
        space = payload.find(b" ", at, at + 21)
        digits = payload[at:space]
        if space < 0 or not digits.isdigit():
            raise ArchiveRefused("it is not a .tar.gz (a PAX record's length)")
        end = at + int(digits)
        record = payload[space + 1 : end]
        if end > len(payload) or end <= space or not record.endswith(b"\n") or b"=" not in record:
            raise ArchiveRefused("it is not a .tar.gz (a PAX record)")
        key, _, value = record[:-1].partition(b"=")
        text = key.decode("utf-8", "surrogateescape")
        if text.startswith("GNU.sparse"):
            raise ArchiveRefused("it holds something other than files and folders (a sparse file)")
        records[text] = value.decode("utf-8", "surrogateescape")
        at = end
    return records
