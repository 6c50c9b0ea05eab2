"""The OpenAI-compatible routes around a fake engine: the same request path as /generate, OpenAI's shapes out.

(The official ``openai`` package against the real engine: tests/integration/test_openai_sdk.py.)"""

from __future__ import annotations

import json

import pytest
import yaml

from service.security import hash_key
from tests.unit.conftest import FLOW_CODE

ASK = "when a form is submitted, post the answers to #sales"
KV = 'start: pair\npair: KEY "=" VALUE\nKEY: /[a-z]{1,16}/\nVALUE: /[a-z0-9]{1,16}/\n'


def _chunks(text: str) -> list[dict | str]:
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def test_a_completion_is_the_generate_request_in_openais_shape(make_client):
    with make_client() as client:
        native = client.post("/generate", json={"dsl": "flow", "text": ASK}).json()
        r = client.post("/v1/completions", json={"model": "flow", "prompt": ASK})
        first, second = client.engine.calls
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion" and body["model"] == "flow"
    assert body["choices"] == [{"index": 0, "text": FLOW_CODE, "finish_reason": "stop", "logprobs": None}]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] == native["usage"]["prompt_tokens"] and usage["completion_tokens"] == 2
    assert body["nl2dsl"]["valid"] is True and body["nl2dsl"]["dsl"] == "flow"
    assert body["id"] == f"cmpl-{body['nl2dsl']['request_id']}" == f"cmpl-{r.headers['x-request-id']}"
    # One request path: the engine got the same prompt and decoding grammar both ways.
    assert first["prompt_token_ids"] == second["prompt_token_ids"] and first["params"] == second["params"]


def test_a_chat_completion_takes_the_last_user_message(make_client):
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "something else"},
                {"role": "assistant", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": ASK}]}]
    with make_client() as client:
        client.post("/v1/completions", json={"model": "flow", "prompt": ASK})
        r = client.post("/v1/chat/completions", json={"model": "flow", "messages": messages})
        by_completion, by_chat = client.engine.calls
    choice = r.json()["choices"][0]
    assert r.json()["object"] == "chat.completion"
    assert choice["message"] == {"role": "assistant", "content": FLOW_CODE} and choice["finish_reason"] == "stop"
    assert by_chat["prompt_token_ids"] == by_completion["prompt_token_ids"]


def test_a_completion_cut_by_max_tokens_says_length_and_not_valid(make_client):
    with make_client(pieces=["when forms.sub"], finish_reason="length") as client:
        body = client.post("/v1/completions", json={"model": "flow", "prompt": ASK, "max_tokens": 1}).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["nl2dsl"]["valid"] is False


@pytest.mark.parametrize("kind", ["completions", "chat/completions"])
def test_a_stream_is_openais_chunks_then_done(make_client, kind):
    ask = {"prompt": ASK} if kind == "completions" else {"messages": [{"role": "user", "content": ASK}]}
    with make_client() as client:
        r = client.post(f"/v1/{kind}", json={"model": "flow", "stream": True, **ask,
                                             "stream_options": {"include_usage": True}})
    *chunks, usage, done = _chunks(r.text)
    assert r.headers["content-type"].startswith("text/event-stream") and done == "[DONE]"
    if kind == "completions":
        text = "".join(c["choices"][0]["text"] for c in chunks)
    else:
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == FLOW_CODE
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert chunks[-1]["nl2dsl"]["valid"] is True and len({c["id"] for c in chunks + [usage]}) == 1
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 2


@pytest.mark.parametrize("field", [{"n": 9}, {"n": 2, "stream": True}, {"n": "2"},
                                   {"stop": ["\n"]}, {"logprobs": 1}, {"top_p": 0.5}, {"echo": True},
                                   {"prompt": ["one", "two"]}, {"prompt": ""}, {"model": "flow:a:b"}])
def test_what_nl2dsl_does_not_do_is_refused_in_openais_error_shape(make_client, field):
    with make_client() as client:
        r = client.post("/v1/completions", json={"model": "flow", "prompt": ASK, **field})
    error = r.json()["error"]
    assert r.status_code == 422 and error["type"] == "invalid_request" and error["code"] == 422
    assert error["param"] in {next(iter(field)), "body"} and error["message"], error
    assert not client.engine.calls


def test_n_choices_are_the_candidates_the_answer_first_with_their_votes(make_client):
    from service.engine import Delta

    codes = ['when forms.submitted(form: "A")\nthen chat.post_message(channel: "#b", text: "c")',
             'when forms.submitted(form: "B")\nthen chat.post_message(channel: "#b", text: "c")']
    with make_client() as client:
        async def generate(prompt_token_ids, *, request_id, tenant=None, adapter=None, params=None, deadline=None):
            index = int(request_id.rsplit("-", 1)[1])
            yield Delta(codes[min(index, 1)], 3, "stop", 0.001, 0, -0.3)

        client.engine.generate = generate
        r = client.post("/v1/chat/completions", json={"model": "flow", "n": 3,
                                                      "messages": [{"role": "user", "content": ASK}]})
    answer = r.json()
    assert r.status_code == 200, r.text
    assert [c["message"]["content"] for c in answer["choices"]] == [codes[1], codes[0], codes[1]]
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2] and answer["nl2dsl"]["votes"] == [2, 1, 2]
    assert answer["usage"]["completion_tokens"] == 9 and 0 < answer["nl2dsl"]["confidence"] < 1


def test_a_chat_without_a_user_message_is_refused(make_client):
    with make_client() as client:
        r = client.post("/v1/chat/completions", json={"model": "flow", "messages": [{"role": "system",
                                                                                     "content": "hi"}]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages"


def test_an_unknown_dsl_or_adapter_in_model_is_a_404_as_on_generate(make_client):
    with make_client() as client:
        dsl = client.post("/v1/completions", json={"model": "cobol", "prompt": ASK})
        adapter = client.post("/v1/completions", json={"model": "flow:nope", "prompt": ASK})
    assert dsl.status_code == 404 and dsl.json()["error"]["type"] == "unknown_dsl"
    assert adapter.status_code == 404 and adapter.json()["error"]["type"] == "unknown_adapter"


@pytest.mark.parametrize("spelling", ["guided_grammar", "structured_outputs"])
def test_a_one_off_grammar_is_what_the_engine_decodes_and_the_parse_uses(make_client, spelling):
    field = {"guided_grammar": KV} if spelling == "guided_grammar" else {"structured_outputs": {"grammar": KV}}
    with make_client(pieces=["port", "=80"]) as client:
        body = client.post("/v1/completions", json={"model": "flow", "prompt": "listen on 80", **field}).json()
        (call,) = client.engine.calls
        flow = client.get("/dsls/flow").json()
    assert "KEY" in call["params"].grammar and "forms" not in call["params"].grammar, call["params"].grammar
    assert body["choices"][0]["text"] == "port=80" and body["nl2dsl"]["valid"] is True, body
    assert flow["grammar"] != KV  # used once, never kept


def test_a_one_off_grammar_that_does_not_compile_is_a_400(make_client):
    with make_client() as client:
        r = client.post("/v1/completions", json={"model": "flow", "prompt": ASK, "guided_grammar": "start: nope"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "grammar_invalid" and not client.engine.calls


def test_a_one_off_grammar_is_bounded_like_an_upload(make_client):
    slow = "start: " + " ".join(f'"a{i}"?' for i in range(17)) + "\n"  # ~30 s for lark to compile
    with make_client(grammar_compile_timeout_s=1, max_grammar_chars=500) as client:
        too_slow = client.post("/generate", json={"dsl": "flow", "text": ASK, "grammar": slow})
        too_long = client.post("/v1/completions", json={"model": "flow", "prompt": ASK, "guided_grammar": KV * 10})
        served = client.post("/v1/completions", json={"model": "flow", "prompt": ASK})
    assert too_slow.status_code == 400 and too_slow.json()["error"]["detail"]["limit"] == "compile_time"
    assert too_long.status_code == 422 and too_long.json()["error"]["param"] == "grammar"
    assert served.status_code == 200 and len(client.engine.calls) == 1  # only the ordinary request reached it


def test_models_lists_what_each_key_may_use(make_client, tmp_path):
    from tests.helpers import write_fake_adapter

    adapters = tmp_path / "adapters"
    adapters.mkdir()
    fingerprint = _served_fingerprint()
    write_fake_adapter(adapters, "general", fingerprint=fingerprint, dsl="flow")
    write_fake_adapter(adapters, "alphas", fingerprint=fingerprint, dsl="flow", tenants=("alpha-corp",))
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"sha256": hash_key("alpha-key"), "tenant": "alpha-corp"},
                                             {"sha256": hash_key("beta-key"), "tenant": "beta-corp",
                                              "dsls": ["flow"]}]}))
    with make_client(auth="keys", api_keys_file=keys, adapters_dir=adapters) as client:
        alpha = client.get("/v1/models", headers={"Authorization": "Bearer alpha-key"}).json()
        beta = client.get("/v1/models", headers={"Authorization": "Bearer beta-key"}).json()
        hidden = client.get("/v1/models/flow:alphas", headers={"Authorization": "Bearer beta-key"})
        refused = client.post("/v1/completions", json={"model": "flow:alphas", "prompt": ASK},
                              headers={"Authorization": "Bearer beta-key"})
        anonymous = client.get("/v1/models")
    alpha_ids = {m["id"]: m["owned_by"] for m in alpha["data"]}
    assert alpha["object"] == "list" and {"flow", "sql", "flow:general", "flow:alphas"} <= set(alpha_ids)
    assert alpha_ids["flow:alphas"] == "alpha-corp" and alpha_ids["flow:general"] == alpha_ids["flow"] == "shared"
    assert "sql:general" not in alpha_ids  # general generates flow only
    assert {m["id"] for m in beta["data"]} == {"flow", "flow:general"}  # beta's key: flow only, no alpha adapter
    assert hidden.status_code == 404 and hidden.json()["error"]["param"] == "model"
    assert refused.status_code == 404 and refused.json()["error"]["type"] == "unknown_adapter"
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == 401


def _served_fingerprint() -> str:
    from service.config import Settings
    from service.model import base_fingerprint, resolve_model

    return base_fingerprint(resolve_model(None, Settings().cache_dir))
