"""Prompts: how a question (and a teacher's context) becomes the token ids before a completion.

The student's prompt and every teacher's prompt are rendered the same way (chat template when the
tokenizer has one and the mode allows, raw text otherwise); a self-distillation teacher only adds
its context before the question. Completions are always the student's token ids, appended as is.

Knows tokenizers and text; knows nothing of models or trees.
"""

from __future__ import annotations

from .config import PromptConfig
from .data import Question
from .errors import ConfigError

__all__ = ["question_block", "render_prompt", "render_user_message", "uses_chat", "DEFAULT_INSTRUCTIONS"]

DEFAULT_INSTRUCTIONS = {
    "numeric": 'Solve it briefly and end with "The answer is N."',
    "choice": 'Answer with the letter of the correct choice, ending with "The answer is X."',
    "yesno": 'Answer yes or no, ending with "The answer is yes." or "The answer is no."',
}
_LETTERS = "ABCDEFGHIJ"


def question_block(question: Question, config: PromptConfig) -> str:
    """The question text, its lettered choices and the instruction."""
    parts = [question.question.strip()]
    if question.choices:
        parts.append("\n".join(f"{_LETTERS[i]}. {c}" for i, c in enumerate(question.choices)))
    instruction = config.instruction or DEFAULT_INSTRUCTIONS.get(question.verifier, "")
    if instruction:
        parts.append(instruction)
    return "\n".join(parts)


def uses_chat(tokenizer, config: PromptConfig) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if config.mode == "chat" and not has_template:
        raise ConfigError("prompt.mode", "chat", "the tokenizer has no chat template; use 'raw' or 'auto'")
    return config.mode == "chat" or (config.mode == "auto" and has_template)


def render_prompt(tokenizer, question: Question, config: PromptConfig, context: str | None = None) -> list[int]:
    """Token ids of the prompt; ``context`` (a teacher's privileged text) goes before the question."""
    body = question_block(question, config)
    if context:
        body = f"{context.strip()}\n\n{body}"
    return render_user_message(tokenizer, body, config)


def render_user_message(tokenizer, body: str, config: PromptConfig) -> list[int]:
    """Token ids of one user turn ready for the assistant's answer (chat), or a raw Q/A prompt."""
    if uses_chat(tokenizer, config):
        messages = []
        if config.system:
            messages.append({"role": "system", "content": config.system})
        messages.append({"role": "user", "content": body})
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = f"Question: {body}\nAnswer:"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
