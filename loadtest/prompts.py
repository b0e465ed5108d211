"""Prompts of a requested token length, counted the way the server counts them.

A prompt is a run of common English words, each of which the tokenizer keeps as one token (with or without a
leading space), so lengths add up word by word; the builder then measures the real count - through the chat
template for chat requests, with the tokenizer's special tokens for completions - and corrects the word count
until it matches. Without a tokenizer (`--tokenizer none`, or a model whose tokenizer cannot be loaded) the
count is an estimate of one token per word, chat template not counted, and records say `prompt_exact: false`.

Shared prefixes: each Mooncake hash id becomes a fixed run of words seeded by the id, so equal ids give equal
text and equal tokens; the rest of a prompt is seeded per request, so unrelated prompts diverge at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BUILTIN_SERVED_NAME = "SmolLM2-135M-Instruct"

COMMON_WORDS = tuple("""
the of and to in is was for that with as on by at from his her they this have had not are but which one were
all their has been there who more when will would can if out so what up about into them some time than other
only new its could these two may then first any like now over such our even most made after also did many
before must through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being under never day
same another know while last might great old year off come since against go came right used take three small
home water house place light night point city play line name word hand part land high school sound number side
story young fact month lot book eye job power hour game head group river field music money food open room
""".split())


@dataclass(frozen=True)
class Prompt:
    text: str
    tokens: int  # the builder's count of what the server will see
    exact: bool  # counted with the model's tokenizer (else estimated)


class PromptBuilder:
    """Builds prompt text of a token length under one counting function (one endpoint, one tokenizer)."""

    def __init__(self, words: Sequence[str], count: Callable[[str], int], *, exact: bool) -> None:
        if not words:
            raise ValueError("PromptBuilder needs at least one word")
        self.words = tuple(words)
        self.count = count
        self.exact = exact
        self.overhead = count(self.words[0]) - 1  # template and special tokens around the text

    @classmethod
    def estimate(cls, words: Sequence[str] = COMMON_WORDS) -> PromptBuilder:
        return cls(words, lambda text: len(text.split()), exact=False)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, endpoint: str) -> PromptBuilder:
        def count(text: str) -> int:
            if endpoint == "chat":
                text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                     add_generation_prompt=True)
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])
            return len(tokenizer(text)["input_ids"])  # completions: as the server, with special tokens

        return cls(single_token_words(tokenizer) or COMMON_WORDS, count, exact=True)

    def block_words(self, hash_id: int, block_tokens: int) -> list[str]:
        return random.Random(f"block:{hash_id}").choices(self.words, k=block_tokens)

    def build(self, tokens: int, seed: int | str, prefix_blocks: Sequence[int] = (), block_tokens: int = 0) -> Prompt:
        """Text of `tokens` tokens (or the shortest possible, if the template alone is longer)."""
        pool: list[str] = [w for h in prefix_blocks for w in self.block_words(h, block_tokens)]
        rng = random.Random(f"prompt:{seed}")
        k = max(1, tokens - self.overhead)
        best: tuple[int, str, int] | None = None  # (distance, text, count)
        for _ in range(8):
            while len(pool) < k:
                pool += rng.choices(self.words, k=k - len(pool) + 16)
            text = " ".join(pool[:k])
            counted = self.count(text)
            if best is None or abs(counted - tokens) < best[0]:
                best = (abs(counted - tokens), text, counted)
            step = max(1, k + tokens - counted)
            if counted == tokens or step == k:
                break
            k = step
        return Prompt(best[1], best[2], self.exact)


def single_token_words(tokenizer: Any, words: Sequence[str] = COMMON_WORDS) -> list[str]:
    """The words the tokenizer keeps whole, both at the start of a text and after a space."""
    def one(text: str) -> bool:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1

    return [w for w in words if one(w) and one(" " + w)]


def load_tokenizer(spec: str, model: str) -> Any | None:
    """The tokenizer named by --tokenizer; None means estimate. `auto` knows pdserve's built-in model."""
    if spec == "none":
        return None
    try:
        from transformers import AutoTokenizer

        if spec != "auto":
            return AutoTokenizer.from_pretrained(spec)
        if model == BUILTIN_SERVED_NAME:
            from serving.config import BUILTIN_MODEL
            from serving.model import resolve_model

            return AutoTokenizer.from_pretrained(resolve_model(BUILTIN_MODEL, progress=log.info))
        return AutoTokenizer.from_pretrained(model)
    except Exception as exc:  # no transformers, no such folder, no hub: fall back to the estimate, loudly
        log.warning("tokenizer %r for model %r unavailable (%s: %s); prompt lengths are estimates "
                    "(1 token per word)", spec, model, type(exc).__name__, exc)
        return None
