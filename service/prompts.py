"""System prompt + retrieved examples + the request -> one chat-templated prompt.

Serving and training call the same :func:`build_prompt`, so an adapter sees at inference exactly the
prompt shape it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from service.grammars import Example, Grammar

__all__ = ["ChatTokenizer", "build_messages", "build_prompt", "user_message"]


class ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def system_message(grammar: Grammar) -> str:
    return (
        f"You translate requests written in English into code of the `{grammar.name}` language. "
        f"{grammar.description} Answer with the code only."
    )


def user_message(text: str, context: str | None = None) -> str:
    """The user turn: the request, with its context (e.g. a table schema) first when there is one."""
    return f"Context: {context}\nRequest: {text}" if context else text


def build_messages(
    grammar: Grammar, text: str, *, context: str | None = None, examples: Sequence[Example] = ()
) -> list[dict[str, str]]:
    """Chat messages: system, then each example as a user/assistant pair, then the request."""
    messages = [{"role": "system", "content": system_message(grammar)}]
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
) -> str:
    """The prompt string the model continues (chat template applied, generation prompt added)."""
    messages = build_messages(grammar, text, context=context, examples=examples)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
