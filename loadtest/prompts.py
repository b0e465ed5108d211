"""Prompts of a requested token length, counted the way the server counts them.

A prompt is a run of common English words, each of which the tokenizer keeps as one token (with or without a
leading space), so lengths add up word by word; the builder then measures the real count - through the chat
template for chat requests, with the tokenizer's special tokens for completions - and corrects the word count
until it matches. By default (`--tokenizer auto`) the server counts: vLLM's `/tokenize` (pdserve serves it too)
runs the server's own tokenizer and chat template, so the load test needs no model files and imports nothing of
the server. It is asked only before the run starts (which words are single tokens, what the template adds, and
a check that lengths add up), never while requests are measured. A server without `/tokenize` falls back to the
model's Hugging Face tokenizer; without either (`--tokenizer none`, or nothing loads) the count is an estimate
of one token per word, chat template not counted, and records say `prompt_exact: false`.

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

ENDPOINTS = ("chat", "completions")

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

    @classmethod
    def from_server(cls, server: ServerTokenizer, endpoint: str) -> PromptBuilder:
        """Counted by the server before the run; while it runs, a prompt's count is its words plus what the
        template adds, which the server confirmed adds up (else every count asks the server, said loudly)."""
        words = server.single_token_words()
        overhead = server.count(endpoint, words[0]) - 1
        rng = random.Random("additivity")
        samples = [" ".join(rng.choices(words, k=n)) for n in (48, 300)]
        if all(server.count(endpoint, text) == len(text.split()) + overhead for text in samples):
            return cls(words, lambda text: len(text.split()) + overhead, exact=True)
        log.warning("token counts of %s prompts do not add up word by word: each prompt is counted by the "
                    "server's /tokenize while the test runs", endpoint)
        return cls(words, lambda text: server.count(endpoint, text), exact=True)

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
    return whole_words(lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]), words)


def whole_words(tokens_in: Callable[[str], int], words: Sequence[str]) -> list[str]:
    """The words `tokens_in` (a count without special tokens) counts as one token, alone and after a space."""
    return [w for w in words if tokens_in(w) == 1 and tokens_in(" " + w) == 1]


class ServerTokenizer:
    """Token counts from the server's `/tokenize`: its own tokenizer and chat template."""

    def __init__(self, http: Any, root_url: str, model: str, headers: dict[str, str]) -> None:
        self.http, self.url, self.model, self.headers = http, root_url.rstrip("/") + "/tokenize", model, headers
        self._words: list[str] | None = None

    def count(self, endpoint: str, text: str, add_special_tokens: bool | None = None) -> int:
        body: dict[str, Any] = ({"messages": [{"role": "user", "content": text}], "add_generation_prompt": True}
                                if endpoint == "chat" else {"prompt": text})
        if add_special_tokens is not None:
            body["add_special_tokens"] = add_special_tokens
        response = self.http.post(self.url, json={"model": self.model, **body}, headers=self.headers, timeout=30)
        response.raise_for_status()
        return int(response.json()["count"])

    def single_token_words(self, words: Sequence[str] = COMMON_WORDS) -> list[str]:
        if self._words is None:
            counted = whole_words(lambda text: self.count("completions", text, add_special_tokens=False), words)
            self._words = counted or list(words)
        return self._words


def prompt_builders(spec: str, model: str, server: ServerTokenizer) -> dict[str, PromptBuilder]:
    """One builder per endpoint from --tokenizer: `auto` (the server's /tokenize, else the model's tokenizer),
    a Hugging Face folder or hub id, or `none` (estimate)."""
    if spec == "auto":
        try:
            return {endpoint: PromptBuilder.from_server(server, endpoint) for endpoint in ENDPOINTS}
        except Exception as exc:  # no /tokenize (not vLLM), or it refused: try the model's own tokenizer
            log.info("the server does not count tokens (%s: %s); loading %r's tokenizer", type(exc).__name__,
                     exc, model)
        spec = model
    tokenizer = load_tokenizer(spec)
    return {endpoint: PromptBuilder.from_tokenizer(tokenizer, endpoint) if tokenizer is not None
            else PromptBuilder.estimate() for endpoint in ENDPOINTS}


def load_tokenizer(spec: str) -> Any | None:
    """A Hugging Face tokenizer (folder or hub id); None means estimate."""
    if spec == "none":
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(spec)
    except Exception as exc:  # no transformers, no such folder, no hub: fall back to the estimate, loudly
        log.warning("tokenizer %r unavailable (%s: %s); prompt lengths are estimates (1 token per word)", spec,
                    type(exc).__name__, exc)
        return None
