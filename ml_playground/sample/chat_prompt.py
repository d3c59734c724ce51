"""A chat prompt as training rendered it: the ids a model answers from, and its stop ids.

Both read the chat template the records were rendered with (data/rendering.py), so a
fine-tuned model is prompted exactly as it learned and stops where its turns ended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jinja2 import TemplateError

from ml_playground.data.rendering import ChatTokenizer, TemplateFailedError
from ml_playground.errors import DataError


def generation_prompt(
    tokenizer: ChatTokenizer, conversation: Sequence[Mapping[str, str]]
) -> list[int]:
    """The ids the model answers `conversation` from: the turns rendered as training
    rendered them, then the template's opening of an assistant turn."""
    try:
        text = tokenizer.apply_chat_template(
            [dict(message) for message in conversation],
            tokenize=False,
            add_generation_prompt=True,
        )
    except (ValueError, TemplateError) as exc:
        raise DataError(
            f"the chat template of {tokenizer.name_or_path} refuses the conversation ({exc}); "
            "fix the template ([prepare] chat_template) or the system prompt "
            "([export.ollama] system)"
        ) from None
    except Exception as exc:  # user code: whatever it raises is one line
        raise TemplateFailedError(tokenizer, exc) from None
    return tokenizer.encode(str(text), add_special_tokens=False)


# Digits and punctuation: a probe that reads the same in every language's template.
END_OF_TURN_QUESTION = "1 + 1 = ?"
END_OF_TURN_PROBE = "2."


def end_of_turn_ids(tokenizer: ChatTokenizer) -> frozenset[int]:
    """The special token the chat template closes an assistant turn with (Qwen2's
    <|im_end|>, Gemma's <end_of_turn>, Llama 3's <|eot_id|>): where an answer ends.

    Found by rendering a one-turn conversation and reading the token after the answer, so
    any template works without a list of model families. Empty without a template, or
    when the answer is followed by plain text rather than a special token.
    """
    if not tokenizer.chat_template:
        return frozenset()
    conversation = [
        {"role": "user", "content": END_OF_TURN_QUESTION},
        {"role": "assistant", "content": END_OF_TURN_PROBE},
    ]
    try:
        rendered = str(tokenizer.apply_chat_template(conversation, tokenize=False))
    except Exception:  # user code; a template that fails here fails a chat
        return frozenset()  # too, where generation_prompt reports it in one line
    _, found, after = rendered.rpartition(END_OF_TURN_PROBE)
    following = tokenizer.encode(after, add_special_tokens=False) if found else []
    if following and following[0] in tokenizer.all_special_ids:
        return frozenset(following[:1])
    return frozenset()
