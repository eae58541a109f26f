"""Evaluation prompts as whole conversations: every turn up to the final assistant turn is kept.

A prompt is a string (one user turn) or a list of `{"role", "content"}` messages (system prompt,
earlier turns, the last user turn). `conversation_prompt` turns a test conversation into such a
prompt (a plain string when it is a single user turn, so records stay readable), `prompt_messages`
renders a prompt as the messages the chat template receives, and `last_user_turn` gives judges the
request being answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Prompt", "conversation_prompt", "conversation_and_reference", "prompt_messages", "last_user_turn"]

Prompt = str | list[dict[str, str]]


def _turns(messages: Any) -> list[dict[str, str]] | None:
    if not isinstance(messages, list):
        return None
    turns = []
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return None
        turns.append({"role": m["role"], "content": m["content"]})
    return turns


def conversation_prompt(messages: Any) -> Prompt | None:
    """The turns before the final assistant turn (all turns when it ends on a user turn), or `None`.

    A single user turn comes back as its string; `None` when there is no user turn to answer.
    """
    turns = _turns(messages)
    if not turns:
        return None
    if turns[-1]["role"] == "assistant":
        turns = turns[:-1]
    if not turns or turns[-1]["role"] != "user":
        return None
    if len(turns) == 1:
        return turns[0]["content"]
    return turns


def conversation_and_reference(messages: Any) -> tuple[Prompt, str] | None:
    """`(prompt, reference)` of a test conversation ending with the assistant's reference answer."""
    turns = _turns(messages)
    if not turns or turns[-1]["role"] != "assistant":
        return None
    prompt = conversation_prompt(turns)
    return None if prompt is None else (prompt, turns[-1]["content"])


def prompt_messages(prompt: Prompt, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The chat messages of `prompt`; `system_prompt` is added when the conversation has no system turn."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def last_user_turn(prompt: Prompt) -> str:
    """The request a reply answers (what refusal judges read)."""
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")
