"""One real service per test run, shared by integration and e2e tests: `nl2dsl serve` (uvicorn + vLLM on
the embedded model) in a subprocess.

The engine runs in float32 so adapter outputs can be compared token for token with peft + transformers
(docs/PLATFORM.md: bf16 random adapters drift by rounding). Adapters are made here, in a temporary folder:
two random ones, and one that claims another base model. What tenants publish goes to an S3 bucket on moto's
S3-protocol server, run here, as production's goes to a bucket: the journal and residency on the real protocol.
"""

from __future__ import annotations

import faulthandler
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from service.config import Settings
from service.local_server import local_server
from service.model import resolve_model
from service.security import hash_key
from tests.helpers import make_random_adapter

STARTUP_TIMEOUT_S = 300
#: How long the interpreter may take to exit once the run is over.
EXIT_GRACE_S = 120


#: The test server's API keys (stored hashed in its keys file): an admin and three tenants.
ADMIN_KEY = "test-admin-key"
API_KEYS = {
    ADMIN_KEY: {"admin": True},
    "alpha-key": {"tenant": "alpha-corp"},
    "beta-key": {"tenant": "beta-corp", "dsls": ["flow"]},
    "corrupt-key": {"tenant": "corrupt-corp"},
}


@dataclass
class Server:
    url: str
    model_dir: str
    adapters_dir: Path
    log: Path
    #: The NL2DSL_* settings it runs with (its store included): another replica starts with the same.
    env: dict[str, str]

    def client(self, key: str | None = ADMIN_KEY, **kwargs) -> httpx.Client:
        """A client of the test server, with ``key`` (default: the admin's; None: no key)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120), headers=headers, **kwargs)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order of a run (the sort keeps the rest as collected):

    - the end-to-end tests (Locust, Prometheus, the browser) after the integration tests, on a warm server whose
      first requests (one-time grammar and adapter set-up) are behind it;
    - start-up tests, which load engines of their own, after the rest;
    - tests marked ``stops_replica`` after those: they end the second replica;
    - tests marked ``stops_server`` last: they end the session server.

    Every test id must be unique: tools that pick tests by id (pytest-xdist, ``--lf``) would run only one of
    tests sharing an id, silently. (schemathesis's own parametrize once gave 22 fuzzed operations one id.)
    """
    items.sort(key=lambda item: (item.get_closest_marker("stops_server") is not None,
                                 item.get_closest_marker("stops_replica") is not None,
                                 item.nodeid.startswith(("tests/e2e/", "tests/integration/test_startup.py"))))
    repeated = sorted(nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1)
    if repeated:
        raise pytest.UsageError(f"tests share an id, so a tool picking tests by id would run one of each: {repeated}")


def pytest_unconfigure(config: pytest.Config) -> None:
    """A run that is over must also end. Past ``EXIT_GRACE_S`` every thread's stack is printed and the process
    exits 1: a thread left blocked (a lifespan never shut down, a worker waiting on a lock) otherwise holds the
    interpreter's exit until CI's own limit, with nothing to say which."""
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True, file=sys.__stderr__)


@pytest.fixture(scope="session")
def s3_store() -> dict[str, str]:
    """The environment of a replica whose store is a bucket on a moto S3 server of this test session."""
    import boto3
    from moto.server import ThreadedMotoServer

    from service.local_server import free_port

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in credentials.items()
                                                  if k != "AWS_DEFAULT_REGION"},
                 region_name="us-east-1").create_bucket(Bucket="nl2dsl-test")
    yield {**credentials, "NL2DSL_STORE": "s3://nl2dsl-test/store", "NL2DSL_S3_ENDPOINT_URL": endpoint}
    moto.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory, s3_store) -> Server:
    model_dir = resolve_model(None, Settings().cache_dir)
    adapters = tmp_path_factory.mktemp("adapters")
    make_random_adapter(model_dir, adapters / "alpha", seed=1, tenants=["alpha-corp"])
    make_random_adapter(model_dir, adapters / "beta", seed=2, dsl="flow")
    make_random_adapter(model_dir, adapters / "other-base", seed=3)
    manifest = (adapters / "other-base" / "manifest.yaml").read_text()
    fingerprint = manifest.split("fingerprint: ")[1].split()[0]
    (adapters / "other-base" / "manifest.yaml").write_text(manifest.replace(fingerprint, "feedfacefeedface"))
    _train_tiny_adapter(model_dir, adapters / "tiny-trained")
    # A tenant adapter whose weights were cut short on disk: its requests fail, everyone else is served.
    make_random_adapter(model_dir, adapters / "corrupt", seed=4, dsl="flow", tenants=["corrupt-corp"])
    weights = adapters / "corrupt" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    keys = tmp_path_factory.mktemp("secrets") / "api-keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [
        {"sha256": hash_key(key), **entry} for key, entry in API_KEYS.items()
    ]}))

    env = {
        "NL2DSL_DTYPE": "float32",
        "NL2DSL_ADAPTERS_DIR": str(adapters),
        "NL2DSL_MAX_LORAS": "2",
        "NL2DSL_MAX_CPU_LORAS": "2",  # a third adapter evicts one (tests/integration/test_trust.py)
        "NL2DSL_LOG_LEVEL": "info",
        "NL2DSL_AUTH": "keys",
        "NL2DSL_API_KEYS_FILE": str(keys),
        # With keys on, /metrics is off the API port unless asked for: the tests read it there.
        "NL2DSL_METRICS_ON_API": "true",
        # A 2-core CI machine under the Locust smoke takes up to ~2 min a request: no 504 for slowness.
        "NL2DSL_REQUEST_TIMEOUT_S": "600",
        **s3_store,
        "NL2DSL_STORE_POLL_S": "1",
        # Runs started through POST /onboarding keep their work here, not in the user's cache: a run left by an
        # earlier test session would make the next one a continuing run.
        "NL2DSL_ONBOARDING_DIR": str(tmp_path_factory.mktemp("onboarding")),
        # SIGTERM's drain, short enough for the last test to see a long request cut (test_drain.py).
        "NL2DSL_DRAIN_TIMEOUT_S": "10",
    }
    log = tmp_path_factory.mktemp("server") / "server.log"
    try:
        with local_server(env=env, log=log, timeout=STARTUP_TIMEOUT_S) as url:
            yield Server(url=url, model_dir=model_dir, adapters_dir=adapters, log=log, env=env)
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def replica(server, tmp_path_factory) -> Server:
    """A second `nl2dsl serve` with the session server's settings and store that allows one request per tenant
    at a time: a 429 whenever a test holds its tenant's slot. Tests marked ``stops_replica`` kill its engine."""
    log = tmp_path_factory.mktemp("replica") / "server.log"
    env = {**server.env, "NL2DSL_TENANT_MAX_CONCURRENCY": "1"}
    try:
        with local_server(env=env, log=log, timeout=STARTUP_TIMEOUT_S) as url:
            yield Server(url=url, model_dir=server.model_dir, adapters_dir=server.adapters_dir, log=log, env=env)
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(str(exc))


def _train_tiny_adapter(model_dir: str, output: Path) -> None:
    """A few real training steps on a few sql examples, with the project's trainer (`nl2dsl train`)."""
    from service.demo_data.datasets import load_split
    from service.grammars import GrammarRegistry
    from service.training.trainer import TrainConfig, train

    settings = Settings()
    rows = load_split(settings.data_dir, "sql", "train", limit=24)
    config = TrainConfig(name="tiny-trained", dsl="sql", output=output, tenants=["tiny-corp"], steps=6,
                         batch_size=4, learning_rate=3e-3, warmup_steps=1, rank=4, alpha=8,
                         target_modules=["q_proj", "v_proj"], eval_every=6, eval_size=4)
    train(config, model_path=model_dir, grammar=GrammarRegistry(settings.grammars_dir).load().get("sql"),
          train_rows=rows[:20], heldout_rows=rows[20:], progress=False)


@pytest.fixture()
def client(server):
    with server.client() as c:
        yield c
