"""Prompt templates and their rendering into token-id pieces.

A template is a string with exactly one ``{text}`` and at most one ``<PST>``. It is rendered into
``(prefix ids, text ids, suffix ids)`` so that the placeholder position and the truncation point
are known exactly, without searching for special tokens in a tokenised string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

PST = "<PST>"
TEXT = "{text}"

# Prompt families from the literature. Each template carries <PST> where the paper puts it; in
# vanilla mode the placeholder (and one adjacent space) is removed, giving the original prompt.
PROMPTEOL = ['This sentence : <PST> "{text}" means in one word:"']

# Lei et al. 2024 (MetaEOL): eight meta-task prompts whose embeddings are averaged.
METAEOL = [
    "In this task, you're presented with a text excerpt. Your task is to categorize the excerpt "
    "into a broad category such as 'Education', 'Technology', 'Health', 'Business', "
    "'Environment', 'Politics', or 'Culture'. These categories help in organizing content for "
    "better accessibility and targeting. For this task, this sentence : <PST> \"{text}\" should "
    'be classified under one general category in one word:"',
    "In this task, you're given a statement and you need to determine whether it's presenting an "
    "'Opinion' or a 'Fact'. This distinction is vital for information verification, educational "
    "purposes, and content analysis. For this task, this sentence : <PST> \"{text}\" "
    'discriminates between opinion and fact in one word:"',
    "In this task, you're given a review from an online platform. Your task is to generate a "
    "rating for the product based on the review on a scale of 1-5, where 1 means 'extremely "
    "negative' and 5 means 'extremely positive'. For this task, this sentence : <PST> \"{text}\" "
    'reflects the sentiment in one word:"',
    "In this task, you're reading a personal diary entry. Your task is to identify the "
    "predominant emotion expressed, such as joy, sadness, anger, fear, or love. For this task, "
    'this sentence : <PST> "{text}" conveys the emotion in one word:"',
    "In this task, you're presented with two sentences. Your task is to assess whether the "
    "sentences convey the same meaning. Use 'identical', 'similar', 'different', or 'unrelated' "
    "to describe the relationship. To enhance the performance of this task, this sentence : "
    '<PST> "{text}" means in one word:"',
    "In this task, you're given a sentence and a phrase. Your task is to determine if the phrase "
    "can be a contextual synonym within the given sentence. Options include 'yes', 'no', or "
    "'partially'. To enhance the performance of this task, this sentence : <PST> \"{text}\" "
    'means in one word:"',
    "In this task, you're examining a news article. Your task is to extract the most critical "
    "fact from the article. For this task, this sentence : <PST> \"{text}\" encapsulates the key "
    'fact in one word:"',
    "In this task, you're reviewing a scientific abstract. Your task is to identify the main "
    "entities (e.g., proteins, diseases) and their relations (e.g., causes, treats). For this "
    'task, this sentence : <PST> "{text}" highlights the primary entity or relation in one '
    'word:"',
]

# Zhang et al. 2024: Pretended Chain of Thought and Knowledge Enhancement.
PRETENDED_COT = ['After thinking step by step , this sentence : <PST> "{text}" means in one word:"']
KNOWLEDGE = [
    "The essence of a sentence is often captured by its main subjects and actions, while "
    "descriptive terms provide additional but less central details. With this in mind , this "
    'sentence : <PST> "{text}" means in one word:"'
]
# A passage-oriented wording of PromptEOL for retrieval documents.
PASSAGE_EOL = ['This passage : <PST> "{text}" means in one word:"']

FAMILIES: dict[str, list[str]] = {
    "prompteol": PROMPTEOL,
    "metaeol": METAEOL,
    "pretended_cot": PRETENDED_COT,
    "knowledge": KNOWLEDGE,
    "passage_eol": PASSAGE_EOL,
}


def resolve_templates(prompt: str | Sequence[str]) -> list[str]:
    """A family name, one template, or a list of templates -> a validated list of templates."""
    if isinstance(prompt, str):
        templates = FAMILIES.get(prompt.lower(), [prompt])
    else:
        templates = list(prompt)
    if not templates:
        raise ValueError("prompt: at least one template is required")
    for template in templates:
        validate_template(template)
    return templates


def validate_template(template: str) -> None:
    if not isinstance(template, str):
        raise TypeError(f"prompt template must be a string, got {type(template).__name__}")
    if template.count(TEXT) != 1:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(
            f"prompt template must contain '{{text}}' exactly once (or be one of: {known}); "
            f"got {template!r}"
        )
    if template.count(PST) > 1:
        raise ValueError(f"prompt template may contain '{PST}' at most once; got {template!r}")
    if PST in template and template.index(PST) > template.index(TEXT):
        raise ValueError(f"'{PST}' must come before '{{text}}' in the template; got {template!r}")


def split_template(template: str, token_prepending: bool) -> tuple[str, str, str]:
    """Return (before_pst, after_pst, suffix) strings around the placeholder and the text.

    Without TP the placeholder is dropped: the prompt becomes ``before_pst + after_pst``.
    A template without ``<PST>`` gets it right before the quote that opens the text (or right
    before ``{text}`` when there is no quote), where the paper puts it.
    """
    prefix, suffix = template.split(TEXT)
    if PST in prefix:
        before, after = prefix.split(PST)
    else:
        cut = len(prefix) - 1 if prefix.endswith(('"', "'")) else len(prefix)
        before, after = prefix[:cut], prefix[cut:]
    # Spaces around the placeholder become one space after it, where the tokenizer puts it.
    if before.endswith(" "):
        before, after = before.rstrip(" "), " " + after.lstrip(" ")
    if not token_prepending:
        return "", before + after, suffix
    return before, after, suffix


def preprocess_sentence(text: str) -> str:
    """The paper's sentence normalisation: end with a full stop, inner double quotes -> single."""
    if text and text[-1] not in ".?\"'":
        text += "."
    text = text.replace('"', "'")
    if text.endswith("?"):
        text = text[:-1] + "."
    return text


@dataclass(frozen=True)
class RenderedTemplate:
    """Token ids of one template. The row is ``head + [PST] + tail + text + suffix`` with TP,
    ``tail + text + suffix`` without; ``head`` carries the tokenizer's leading special tokens."""

    head: tuple[int, ...]
    tail: tuple[int, ...]
    suffix: tuple[int, ...]
    token_prepending: bool

    @property
    def template_length(self) -> int:
        return len(self.head) + len(self.tail) + len(self.suffix) + int(self.token_prepending)

    @property
    def shared_prefix(self) -> tuple[int, ...]:
        """The ids every row of this template starts with and whose states do not depend on
        the row (causal attention): everything before the placeholder with TP (the placeholder
        itself is overwritten per row), everything before the text without."""
        return self.head if self.token_prepending else self.head + self.tail

    def row(self, text_ids: Sequence[int], pst_id: int) -> tuple[list[int], int, int]:
        """Assemble one row of ids; returns (ids, PST index or -1, index of the text's first
        token)."""
        if self.token_prepending:
            ids = [*self.head, pst_id, *self.tail, *text_ids, *self.suffix]
            return ids, len(self.head), len(self.head) + 1 + len(self.tail)
        return [*self.head, *self.tail, *text_ids, *self.suffix], -1, len(self.head) + len(self.tail)


def leading_special_ids(tokenizer, text: str) -> list[int]:
    """The special tokens (BOS, ...) the tokenizer puts before ``text``; none for Qwen-style."""
    with_special = tokenizer(text, add_special_tokens=True)["input_ids"]
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def render_template(tokenizer, template: str, token_prepending: bool) -> RenderedTemplate:
    before, after, suffix = split_template(template, token_prepending)

    def ids(piece: str) -> list[int]:
        return list(tokenizer(piece, add_special_tokens=False)["input_ids"]) if piece else []

    first_piece = before if token_prepending else after
    specials = leading_special_ids(tokenizer, first_piece or "x")
    if token_prepending:
        head, tail = specials + ids(before), ids(after)
    else:
        head, tail = specials, ids(after)
    return RenderedTemplate(tuple(head), tuple(tail), tuple(ids(suffix)), token_prepending)
