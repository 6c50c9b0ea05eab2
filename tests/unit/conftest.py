"""Unit-test fixtures: the app around a fake engine (no vLLM)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from unittest.mock import MagicMock

import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.engine import Delta, Engine
from service.model import resolve_model
from service.security import hash_key

#: The tenants' keys of :func:`replica`: key -> what the keys file says of it.
KEYS = {"alpha": {"tenant": "alpha-corp"}, "beta": {"tenant": "beta-corp"}, "admin": {"admin": True}}
FLOW_CODE = 'when forms.submitted(form: "Contact us")\nthen chat.post_message(channel: "#sales", text: "New")'


def _fake_engine(pieces: list[str], finish_reason: str = "stop", delay: float = 0.0) -> MagicMock:
    engine = MagicMock(spec=Engine)
    engine.ready = True
    engine.calls = []

    async def generate(prompt_token_ids, *, request_id, tenant=None, adapter=None, params=None, deadline=None):
        engine.calls.append({"prompt_token_ids": prompt_token_ids, "adapter": adapter, "params": params,
                             "request_id": request_id, "tenant": tenant})
        for i, piece in enumerate(pieces):
            await asyncio.sleep(delay)
            last = i == len(pieces) - 1
            yield Delta(piece, i + 1, finish_reason if last else None, 0.001 if last else None)

    engine.generate = generate
    return engine


@pytest.fixture()
def make_client(tmp_path):
    def make(pieces=None, finish_reason="stop", delay=0.0, **settings):
        engine = _fake_engine(pieces or [FLOW_CODE[:20], FLOW_CODE[20:]], finish_reason, delay)
        options = {"adapters_dir": tmp_path, "data_dir": tmp_path, "store": str(tmp_path / "store"),
                   "max_text_chars": 100, "auth": "off", **settings}
        app = create_app(Settings(**options), engine=engine)
        client = TestClient(app)
        client.engine = engine
        return client

    return make


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A randomly initialised one-layer Llama with the embedded tokenizer: real transformers, milliseconds a step."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None, Settings().cache_dir))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def replica(tmp_path):
    """``replica(store)``: an app on the store folder ``store`` (several of them are several replicas).

    They share a cache of their own (``tmp_path / "cache"``, the embedded model linked in), not the user's: what
    they unpack there must not reach another run.
    """
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(Path(Settings().cache_dir) / "models")
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"sha256": hash_key(k), **v} for k, v in KEYS.items()]}))
    with contextlib.ExitStack() as opened:  # every replica is stopped, even when stopping another one fails

        def make(store: str = "store", pieces: tuple[str, ...] = ("port=80",), **settings) -> TestClient:
            options = {"adapters_dir": tmp_path, "data_dir": tmp_path, "store": str(tmp_path / store),
                       "auth": "keys", "api_keys_file": keys, "store_poll_s": 0.2, "cache_dir": str(cache),
                       **settings}
            client = opened.enter_context(TestClient(create_app(Settings(**options),
                                                                engine=_fake_engine(list(pieces)))))
            client.engine = client.app.state.engine_slot.engine
            return client

        yield make
