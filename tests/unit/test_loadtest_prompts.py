"""Prompts of a requested token length: exact with a tokenizer (fake, and the built-in model's when cached)."""

from __future__ import annotations

import pytest

from loadtest.prompts import COMMON_WORDS, PromptBuilder, single_token_words


class WordTokenizer:
    """A tokenizer that splits on whitespace; 'giraffe' is two tokens; BOS with special tokens."""

    def __call__(self, text, add_special_tokens=True):
        ids = []
        for word in text.split():
            ids += [1, 2] if word == "giraffe" else [3]
        return {"input_ids": ([0] if add_special_tokens else []) + ids}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        assert not tokenize and add_generation_prompt
        return "<s> system : be brief </s> <s> user : " + messages[-1]["content"] + " </s> <s> assistant :"


def test_single_token_words_drops_words_the_tokenizer_splits():
    words = single_token_words(WordTokenizer(), ["cat", "giraffe", "dog"])
    assert words == ["cat", "dog"]


@pytest.mark.parametrize("tokens", [2, 7, 64, 500])
def test_completions_prompts_are_exact(tokens):
    builder = PromptBuilder.from_tokenizer(WordTokenizer(), "completions")
    prompt = builder.build(tokens, seed=tokens)
    assert prompt.exact and prompt.tokens == tokens
    assert len(WordTokenizer()(prompt.text)["input_ids"]) == tokens  # BOS + words


def test_chat_prompts_count_the_template():
    builder = PromptBuilder.from_tokenizer(WordTokenizer(), "chat")
    assert builder.overhead == 13  # the fake template's words
    prompt = builder.build(40, seed=1)
    assert prompt.tokens == 40 and len(prompt.text.split()) == 40 - 13


def test_too_short_for_the_template_gives_the_shortest_prompt():
    prompt = PromptBuilder.from_tokenizer(WordTokenizer(), "chat").build(3, seed=1)
    assert prompt.tokens == 14 and len(prompt.text.split()) == 1
    assert PromptBuilder.from_tokenizer(WordTokenizer(), "completions").build(1, seed=1).tokens == 2  # BOS + 1


def test_equal_hash_ids_give_equal_prefixes_and_seeds_differ():
    builder = PromptBuilder.from_tokenizer(WordTokenizer(), "completions")
    a = builder.build(31, seed="a", prefix_blocks=(7, 8, 9), block_tokens=5).text.split()
    b = builder.build(31, seed="b", prefix_blocks=(7, 8, 4), block_tokens=5).text.split()
    assert a[:10] == b[:10] and a[10:15] != b[10:15]
    assert len(a) == len(b) == 30  # 31 tokens with BOS
    c = builder.build(31, seed="c").text.split()
    d = builder.build(31, seed="d").text.split()
    assert c[:3] != d[:3]
    assert builder.build(31, seed="c").text == " ".join(c)  # deterministic


def test_prefix_blocks_are_cut_to_the_requested_length():
    builder = PromptBuilder.from_tokenizer(WordTokenizer(), "completions")
    words = builder.build(8, seed=0, prefix_blocks=(1, 2), block_tokens=5).text.split()
    assert words == builder.block_words(1, 5) + builder.block_words(2, 5)[:2]


def test_estimate_is_one_token_per_word_and_says_so():
    prompt = PromptBuilder.estimate().build(50, seed=0)
    assert not prompt.exact and prompt.tokens == 50 and len(prompt.text.split()) == 50
    assert set(prompt.text.split()) <= set(COMMON_WORDS)


def test_fit_converges_when_words_do_not_add_up():
    class CharTokenizer(WordTokenizer):  # about 4 characters a token
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [0] * (len(text) // 4)}

    prompt = PromptBuilder(COMMON_WORDS, lambda t: len(CharTokenizer()(t)["input_ids"]), exact=True).build(100, 3)
    assert abs(prompt.tokens - 100) <= 2


def _builtin_tokenizer():
    transformers = pytest.importorskip("transformers")
    from serving.model import BUILTIN_MODELS, cache_dir, is_complete

    folder = cache_dir() / "models" / BUILTIN_MODELS["smollm2-135m-instruct"].name
    if not is_complete(folder):
        pytest.skip(f"built-in model not provisioned at {folder} (python -m serving.model)")
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_builtin_model_tokenizer_lengths_are_exact(endpoint):
    tokenizer = _builtin_tokenizer()
    builder = PromptBuilder.from_tokenizer(tokenizer, endpoint)
    assert len(builder.words) > 100  # common words stay single tokens in SmolLM2's vocabulary
    for tokens in (40, 64, 257, 1000):
        prompt = builder.build(tokens, seed=tokens, prefix_blocks=(1, 2), block_tokens=16)
        if endpoint == "chat":
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}], tokenize=False,
                                                 add_generation_prompt=True)
            counted = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            counted = len(tokenizer(prompt.text)["input_ids"])
        assert prompt.tokens == counted == tokens


class TokenizeServer:
    """What vLLM's /tokenize answers, over WordTokenizer (BOS with special tokens, a chat template of 15 tokens),
    with every request counted; `split_after` makes counts stop adding up word by word past that many words."""

    def __init__(self, split_after: int | None = None):
        self.calls = 0
        self.split_after = split_after

    def post(self, url, json, headers, timeout):
        import httpx

        self.calls += 1
        assert url == "http://server:8000/tokenize" and json["model"] == "m" and headers == {"Authorization": "x"}
        tokenizer = WordTokenizer()
        if "messages" in json:
            text = tokenizer.apply_chat_template(json["messages"], add_generation_prompt=json["add_generation_prompt"])
            count = len(tokenizer(text, add_special_tokens=json.get("add_special_tokens", False))["input_ids"])
        else:
            count = len(tokenizer(json["prompt"], add_special_tokens=json.get("add_special_tokens", True))["input_ids"])
        if self.split_after is not None and count > self.split_after:
            count += 1
        return httpx.Response(200, json={"count": count}, request=httpx.Request("POST", url))


def server_tokenizer(fake):
    from loadtest.prompts import ServerTokenizer

    return ServerTokenizer(fake, "http://server:8000/", "m", {"Authorization": "x"})


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_the_server_counts_before_the_run_and_never_during_it(endpoint):
    fake = TokenizeServer()
    builder = PromptBuilder.from_server(server_tokenizer(fake), endpoint)
    assert "giraffe" not in builder.words and builder.exact
    before = fake.calls
    tokenizer = WordTokenizer()
    for tokens in (20, 64, 500):
        prompt = builder.build(tokens, seed=tokens, prefix_blocks=(1,), block_tokens=8)
        if endpoint == "chat":
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}], add_generation_prompt=True)
            counted = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            counted = len(tokenizer(prompt.text)["input_ids"])
        assert prompt.tokens == counted == tokens
    assert fake.calls == before


def test_counts_that_do_not_add_up_are_asked_of_the_server_for_each_prompt():
    fake = TokenizeServer(split_after=100)
    builder = PromptBuilder.from_server(server_tokenizer(fake), "completions")
    before = fake.calls
    prompt = builder.build(200, seed=1)
    assert fake.calls > before and prompt.exact and abs(prompt.tokens - 200) <= 1


def test_without_tokenize_on_the_server_the_models_tokenizer_then_the_estimate_is_used():
    import httpx

    from loadtest.prompts import prompt_builders

    class NoTokenize:
        def post(self, url, **kw):
            return httpx.Response(404, json={"detail": "Not Found"}, request=httpx.Request("POST", url))

    builders = prompt_builders("auto", "/no/such/model/folder", server_tokenizer(NoTokenize()))
    assert {name: b.exact for name, b in builders.items()} == {"chat": False, "completions": False}


def test_the_load_test_imports_nothing_of_the_server():
    """Not even for pdserve's own model name (it used to import serving.model to find the built-in tokenizer,
    which could start a model conversion on the client's machine)."""
    import os
    import subprocess
    import sys

    code = """
import sys, httpx, loadtest.run, loadtest.locustfile
from loadtest.prompts import ServerTokenizer, prompt_builders
class NoTokenize:
    def post(self, url, **kw):
        return httpx.Response(404, request=httpx.Request("POST", url))
prompt_builders("auto", "SmolLM2-135M-Instruct", ServerTokenizer(NoTokenize(), "http://server:8000", "m", {}))
sys.exit(1 if [m for m in sys.modules if m == "serving" or m.startswith("serving.")] else 0)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
