"""The official ``openai`` package (sync, async, streaming) against the real service: completions and chat
completions give code that parses, ``usage`` adds up, errors arrive as the SDK's own exception types, and
``/v1/models`` and ``model`` follow the same tenancy as /generate."""

from __future__ import annotations

import asyncio

import openai
import pytest

from service.config import Settings
from service.grammars import GrammarRegistry
from tests.conftest import ADMIN_KEY
from tests.helpers import holding_a_slot

GRAMMARS = GrammarRegistry(Settings().grammars_dir).load()

#: Requests the base model answers within max_tokens (flow with retrieved examples, as its matrix row shows).
ASKS = {
    "flow": {"prompt": "when a form is submitted, post the answers to #sales", "max_tokens": 160,
             "extra_body": {"examples": 3}},
    "sql": {"prompt": "count the orders", "max_tokens": 64, "extra_body": {"context": "orders(id, total)"}},
}


def _sdk(server, key: str | None = ADMIN_KEY, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "none", timeout=300, **options)


def _parses(dsl: str, code: str) -> bool:
    return GRAMMARS.get(dsl).parse(code).valid


@pytest.mark.parametrize("dsl", sorted(ASKS))
def test_completions_give_code_that_parses_and_usage_that_adds_up(server, dsl):
    ask = ASKS[dsl]
    with _sdk(server) as sdk:
        completion = sdk.completions.create(model=dsl, prompt=ask["prompt"], max_tokens=ask["max_tokens"],
                                            extra_body=ask["extra_body"])
    choice, usage = completion.choices[0], completion.usage
    assert choice.finish_reason == "stop" and _parses(dsl, choice.text), choice.text
    assert completion.nl2dsl["valid"] is True and completion.model == dsl
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens and usage.completion_tokens > 0


def test_chat_stream_gives_the_same_code_and_usage_as_the_whole_answer(server):
    ask = ASKS["sql"]
    messages = [{"role": "system", "content": "ignored: nl2dsl writes its own"},
                {"role": "user", "content": ask["prompt"]}]
    with _sdk(server) as sdk:
        whole = sdk.chat.completions.create(model="sql", messages=messages, max_tokens=ask["max_tokens"],
                                            extra_body=ask["extra_body"])
        stream = sdk.chat.completions.create(model="sql", messages=messages, max_tokens=ask["max_tokens"],
                                             extra_body=ask["extra_body"], stream=True,
                                             stream_options={"include_usage": True})
        chunks = list(stream)
    code = whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "stop" and _parses("sql", code), code
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len(pieces) >= 2 and "".join(pieces) == code  # greedy: the same code, in pieces
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == ["stop"] and chunks[-1].usage == whole.usage
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


def test_the_async_client_serves_completions_and_chat_together(server):
    async def main():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=ADMIN_KEY, timeout=300) as sdk:
            ask = ASKS["sql"]
            return await asyncio.gather(
                sdk.completions.create(model="sql:base", prompt=ask["prompt"], max_tokens=ask["max_tokens"],
                                       extra_body=ask["extra_body"]),
                sdk.chat.completions.create(model="sql:base", messages=[{"role": "user", "content": ask["prompt"]}],
                                            max_tokens=ask["max_tokens"], extra_body=ask["extra_body"]))

    completion, chat = asyncio.run(main())
    assert completion.choices[0].text == chat.choices[0].message.content  # one request path, greedy
    assert _parses("sql", chat.choices[0].message.content) and chat.nl2dsl["adapter"] == "base"


def test_an_unknown_key_is_the_sdks_authentication_error(server):
    with _sdk(server, "not-a-key", max_retries=0) as sdk, pytest.raises(openai.AuthenticationError) as raised:
        sdk.completions.create(model="flow", prompt="post form answers to #sales")
    # The SDK reads our error's type, and its code (the HTTP status, as vLLM sends it) as a string.
    assert raised.value.status_code == 401 and raised.value.type == "unauthorized" and raised.value.code == "401"


def test_a_tenant_over_its_share_gets_the_sdks_rate_limit_error(replica):
    with holding_a_slot(replica.url, "alpha-key", replica.log), \
            _sdk(replica, "alpha-key", max_retries=0) as sdk, pytest.raises(openai.RateLimitError) as raised:
        sdk.completions.create(model="flow", prompt="post form answers to #sales", max_tokens=8)
    assert raised.value.status_code == 429 and int(raised.value.response.headers["retry-after"]) >= 1
    assert raised.value.body["type"] == "rate_limited"


def test_models_lists_what_the_key_may_use(server):
    def ids(key: str) -> set[str]:
        with _sdk(server, key) as sdk:
            return {model.id for model in sdk.models.list()}

    alpha, beta, admin = ids("alpha-key"), ids("beta-key"), ids(ADMIN_KEY)
    # alpha: every DSL, its own adapter (any DSL) and the shared flow one; not tiny-corp's sql adapter.
    assert {"flow", "sql", "flow:alpha", "sql:alpha", "flow:beta"} <= alpha and "sql:tiny-trained" not in alpha
    assert beta >= {"flow", "flow:beta"} and not {m for m in beta if m.startswith("sql") or "alpha" in m}
    assert "sql:tiny-trained" in admin and "flow:other-base" not in admin  # cannot be served: not listed


def test_another_tenants_adapter_in_model_is_refused_as_on_generate(server):
    with _sdk(server, "beta-key", max_retries=0) as sdk, pytest.raises(openai.NotFoundError) as raised:
        sdk.completions.create(model="flow:alpha", prompt="post form answers to #sales", max_tokens=8)
    with server.client("beta-key") as client:
        native = client.post("/generate", json={"dsl": "flow", "adapter": "alpha", "text": "post form answers"})
    assert native.status_code == 404 and raised.value.body["type"] == native.json()["error"]["type"]
