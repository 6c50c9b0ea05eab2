"""Stand-ins for the Dockerfile's base images, which no registry here can give: debootstrapped, made once."""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx

from deploy.image_check.process import ROOT, run, say

UBUNTU = {"22.04": "jammy", "24.04": "noble"}


def python_base(dockerfile: Path) -> tuple[str, str]:
    """The Debian release and Python version of the Dockerfile's default ``PYTHON_IMAGE`` (python:X.Y-slim-R)."""
    found = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)-slim-(\w+)\s*$", dockerfile.read_text(), re.M)
    if not found:
        raise SystemExit("Dockerfile: ARG PYTHON_IMAGE=python:<X.Y>-slim-<debian release> not found")
    return found.group(2), found.group(1)


def cuda_base(dockerfile: Path) -> str:
    """The Ubuntu release of the Dockerfile's default ``CUDA_IMAGE`` (nvidia/cuda:<version>-runtime-ubuntuYY.MM)."""
    found = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-ubuntu(\d+\.\d+)\s*$", dockerfile.read_text(), re.M)
    if not found or found.group(1) not in UBUNTU:
        raise SystemExit(f"Dockerfile: ARG CUDA_IMAGE=nvidia/cuda:<version>-ubuntu<one of {sorted(UBUNTU)}> not found")
    return UBUNTU[found.group(1)]


def ensure_base(tag: str, release: str, mirror: str, *, include: tuple[str, ...] = (), keyring: Path | None = None,
                check: Callable[[Path], None] | None = None) -> str:
    """A debootstrapped image of ``release`` (minbase + ``include``), apt lists removed, made once."""
    if run("podman", "image", "exists", tag, check=False).returncode == 0:
        say(f"base image {tag} already here")
        return tag
    with tempfile.TemporaryDirectory(prefix="nl2dsl-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        say(f"debootstrap {release} from {mirror} (about a minute) ...")
        options = ["--variant=minbase"] + ([f"--include={','.join(include)}"] if include else [])
        options += [f"--keyring={keyring}"] if keyring else []
        # Debian's debootstrap knows Ubuntu releases up to its own; every Ubuntu release uses the "gutsy" script.
        script = [] if (Path("/usr/share/debootstrap/scripts") / release).exists() else [
            "/usr/share/debootstrap/scripts/gutsy"]
        subprocess.run(["debootstrap", *options, release, str(rootfs), mirror, *script], check=True,
                       stdout=subprocess.DEVNULL)
        if check:
            check(rootfs)
        for leftovers in ("var/lib/apt/lists", "var/cache/apt"):
            shutil.rmtree(rootfs / leftovers)
            (rootfs / leftovers).mkdir()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "--change", "ENV=LANG=C.UTF-8", "-", tag], stdin=tar.stdout,
                       check=True, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise SystemExit("tar of the debootstrapped tree failed")
    say(f"base image {tag} made")
    return tag


def python_stand_in(mirror: str) -> str:
    """For python:X.Y-slim-<release>: Debian's own Python of that release, which must be X.Y."""
    release, python = python_base(ROOT / "Dockerfile")

    def same_python(rootfs: Path) -> None:
        found = run("chroot", str(rootfs), "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
        if found.stdout.strip() != python:
            raise SystemExit(f"Debian {release} has Python {found.stdout.strip()}, the Dockerfile's base {python}")

    return ensure_base(f"localhost/nl2dsl-base:python{python}-{release}", release, mirror,
                       include=("python3", "python3-venv", "python-is-python3", "ca-certificates"), check=same_python)


def cuda_stand_in(mirror: str) -> str:
    """For nvidia/cuda:<version>-runtime-ubuntu<release>: that Ubuntu release, without CUDA's libraries (torch's
    wheels carry the ones it loads). Ubuntu's keyring comes from the release's own index, over HTTPS."""
    release = cuda_base(ROOT / "Dockerfile")
    tag = f"localhost/nl2dsl-base:ubuntu-{release}"
    if run("podman", "image", "exists", tag, check=False).returncode == 0:
        return ensure_base(tag, release, mirror)
    with tempfile.TemporaryDirectory(prefix="nl2dsl-keyring-") as tmp:
        index = httpx.get(f"{mirror.replace('http:', 'https:')}/dists/{release}/main/binary-amd64/Packages.gz",
                          timeout=60).raise_for_status()
        stanza = re.search(r"^Package: ubuntu-keyring\n.*?\n\n", gzip.decompress(index.content).decode(), re.M | re.S)
        filename = re.search(r"^Filename: (\S+)$", stanza.group(0), re.M).group(1)
        sha256 = re.search(r"^SHA256: (\S+)$", stanza.group(0), re.M).group(1)
        deb = httpx.get(f"{mirror.replace('http:', 'https:')}/{filename}", timeout=60).raise_for_status().content
        if hashlib.sha256(deb).hexdigest() != sha256:
            raise SystemExit(f"{filename}: SHA256 differs from the release's index")
        (Path(tmp) / "keyring.deb").write_bytes(deb)
        run("dpkg-deb", "-x", str(Path(tmp) / "keyring.deb"), tmp)

        def ubuntu_sources(rootfs: Path) -> None:  # as in Ubuntu's own images: every pocket and component
            (rootfs / "etc/apt/sources.list").write_text("".join(
                f"deb {mirror} {release}{pocket} main restricted universe multiverse\n"
                for pocket in ("", "-updates", "-backports", "-security")))

        return ensure_base(tag, release, mirror, keyring=Path(tmp) / "usr/share/keyrings/ubuntu-archive-keyring.gpg",
                           check=ubuntu_sources)
