"""System prompt + retrieved examples + the request -> one chat-templated prompt, and its token ids.

Serving and training call the same :func:`build_prompt`, so an adapter sees at inference exactly the
prompt shape it was trained on. Templating and tokenizing cost milliseconds of CPU: the request path calls
:func:`prompt_token_ids` in a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from service.grammars import Example, Grammar, Operation

__all__ = ["ChatTokenizer", "build_messages", "build_prompt", "prompt_token_ids", "user_message"]


class ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def system_message(grammar: Grammar, hints: Sequence[Operation] = ()) -> str:
    text = (
        f"You translate requests written in English into code of the `{grammar.name}` language. "
        f"{grammar.description} Answer with the code only."
    )
    if hints:
        text += "\nOperations that may help:\n" + "\n".join(
            f"- {op.full_name}({', '.join(f'{p.name}: {p.type}' for p in op.params)})  ({op.kind})" for op in hints
        )
    return text


def user_message(text: str, context: str | None = None) -> str:
    """The user turn: the request, with its context (e.g. a table schema) first when there is one."""
    return f"Context: {context}\nRequest: {text}" if context else text


def build_messages(
    grammar: Grammar,
    text: str,
    *,
    context: str | None = None,
    examples: Sequence[Example] = (),
    hints: Sequence[Operation] = (),
) -> list[dict[str, str]]:
    """Chat messages: system (with catalog hints), then each example as a user/assistant pair, then the request."""
    messages = [{"role": "system", "content": system_message(grammar, hints)}]
    for ex in examples:
        messages.append({"role": "user", "content": user_message(ex.text, ex.context)})
        messages.append({"role": "assistant", "content": ex.code})
    messages.append({"role": "user", "content": user_message(text, context)})
    return messages


def build_prompt(
    tokenizer: ChatTokenizer,
    grammar: Grammar,
    text: str,
    *,
    context: str | None = None,
    examples: Sequence[Example] = (),
    hints: Sequence[Operation] = (),
) -> str:
    """The prompt string the model continues (chat template applied, generation prompt added)."""
    messages = build_messages(grammar, text, context=context, examples=examples, hints=hints)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_token_ids(
    tokenizer: Any,
    grammar: Grammar,
    text: str,
    *,
    context: str | None = None,
    examples: Sequence[Example] = (),
    hints: Sequence[Operation] = (),
) -> list[int]:
    """The token ids of :func:`build_prompt` (special tokens come from the chat template, none added)."""
    prompt = build_prompt(tokenizer, grammar, text, context=context, examples=examples, hints=hints)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]
