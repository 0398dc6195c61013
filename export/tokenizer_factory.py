"""A small, real byte-level BPE tokenizer for tiny Qwen3-VL checkpoints.

Qwen's tokenizer is a byte-level BPE with a large vocabulary followed by a block of added special tokens.
This module builds one with the same shape but a few hundred entries, trained deterministically with the
`tokenizers` library on a fixed English corpus that holds the reranker template's words, so that tests
tokenize the real template without downloading anything.

Layout of the vocabulary:

```
0..255            the 256 byte symbols of the byte-level alphabet (every string is encodable)
256..B-1          learned merges, ``yes`` and ``no`` among them as single tokens
B..B+13           QWEN_SPECIAL_TOKENS, in Qwen's order (<|endoftext|>, <|im_start|>, ..., <|video_pad|>)
```

There is no normalizer and no post-processor: encoding never adds BOS/EOS, so the ids of a text are the
same whether it is encoded by `tokenizers` or by `transformers.AutoTokenizer` (the tokenizer config names
the generic `TokenizersBackend`, which reads `tokenizer.json` as is).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from minireranker.runtime.errors import TokenizerError

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Number of BPE entries (byte alphabet + merges) the trainer aims for; the special tokens come on top.
BPE_VOCAB_SIZE = 800

# Words the reranker emits right after "assistant\n", so they are encoded with no leading space.
ANSWER_WORDS: tuple[str, ...] = ("yes", "no")

RERANKER_SYSTEM_PROMPT = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".'
)
RERANKER_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."

_TEMPLATE_LINES = (
    RERANKER_SYSTEM_PROMPT,
    RERANKER_INSTRUCTION,
    "<Document>: a photo of a red bus on a city street",
    "<Instruct>: " + RERANKER_INSTRUCTION,
    "<Query>: which picture shows a bus?",
    "system\nuser\nassistant\n",
)

_PROSE = """\
The quick brown fox jumps over the lazy dog near the river bank.
A small cat sleeps on a warm chair in the sunny kitchen every afternoon.
This document describes a chart with sales numbers for each month of the year.
The table lists the price, the weight and the color of every item in the store.
Search engines rank documents by how well they answer the query of the user.
An image of a mountain lake at sunrise, with trees and a wooden boat.
The report shows that revenue grew by twelve percent in the third quarter.
Please read the question carefully and give a short answer.
Which city is the capital of France? Paris is the capital of France.
How many legs does a spider have? A spider has eight legs.
The train leaves the station at seven and arrives at nine in the evening.
Children play football in the park while their parents talk on the bench.
The recipe needs two eggs, one cup of flour, sugar, milk and a little salt.
Scientists measure the temperature of the ocean with floating sensors.
The museum opens at ten in the morning and closes at six.
Her phone number, written on the first page, is easy to find.
The model reads the picture and the text, then decides if they match.
Relevant results come first; irrelevant ones are moved to the end of the list.
A diagram of the human heart with labels for every chamber and valve.
The weather today is cold and rainy, but tomorrow will be warm and dry.
"""

_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred "
    "thousand million first second third fourth fifth"
)

_COMMON_WORDS = (
    "the of and to in is it you that he was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound most people my over know water than call who may down side been "
    "now find any new work part take get place made live where after back little only round man year came "
    "show every good me give our under name very through just form sentence great think say help low line "
    "image picture photo text page query document answer relevant candidate search retrieve judge provided"
)


def training_corpus(extra_lines: tuple[str, ...] = ()) -> list[str]:
    """The fixed lines the BPE is trained on (template strings, prose, numbers, answers).

    ``extra_lines`` come first, so a checkpoint with its own vocabulary (the demo models' digit and photo
    words) gets whole-word tokens for it; with none the corpus, and so the tokenizer, is the default one.
    """
    lines = list(extra_lines) + list(_TEMPLATE_LINES) + _PROSE.splitlines()
    lines.append(_NUMBER_WORDS)
    lines.append(" ".join(str(n) for n in range(0, 1000, 7)))
    lines.append(_COMMON_WORDS)
    # Answers at line start, as the model emits them after "assistant\n": no leading space, so the
    # byte-level pre-tokenizer sees the bare words and the trainer must merge them.
    for index in range(40):
        lines.append(f"{ANSWER_WORDS[index % 2]}\n{ANSWER_WORDS[(index + 1) % 2]}")
        lines.append(f"Answer {index}: yes or no? " + ("yes" if index % 3 else "no"))
    return lines


def build_tokenizer(extra_lines: tuple[str, ...] = ()) -> Tokenizer:
    """Train the tiny byte-level BPE and add Qwen's special tokens after its vocabulary.

    ``extra_lines`` extend the training corpus (see :func:`training_corpus`). Raises TokenizerError if an
    answer word (``yes``/``no``) is not a single token. Training is deterministic, so the result is cached
    per process and each call returns a fresh copy.
    """
    return Tokenizer.from_str(_trained_tokenizer_json(tuple(extra_lines)))


@lru_cache(maxsize=4)
def _trained_tokenizer_json(extra_lines: tuple[str, ...] = ()) -> str:
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    # Digits one by one as Qwen does; ByteLevel's regex then splits words, spaces and punctuation.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(training_corpus(extra_lines), trainer=trainer)
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in QWEN_SPECIAL_TOKENS]
    )
    _check_tokenizer(tokenizer)
    return tokenizer.to_str()


def _check_tokenizer(tokenizer: Tokenizer) -> None:
    """The template relies on one token per answer word and per special token."""
    for word in ANSWER_WORDS:
        ids = tokenizer.encode(word, add_special_tokens=False).ids
        if len(ids) != 1:
            raise TokenizerError(
                f"the tiny tokenizer encodes {word!r} as {len(ids)} tokens {ids}; it must be one token. "
                "Add more lines starting with the word to training_corpus()."
            )
    bpe_size = tokenizer.get_vocab_size(with_added_tokens=False)
    for offset, token in enumerate(QWEN_SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != bpe_size + offset:
            raise TokenizerError(f"special token {token!r} is not at id {bpe_size + offset}")


def tokenizer_config(tokenizer: Tokenizer) -> dict:
    """The `tokenizer_config.json` that makes `AutoTokenizer` load `tokenizer.json` unchanged."""
    added = {
        str(tokenizer.token_to_id(token)): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in QWEN_SPECIAL_TOKENS
    }
    return {
        # The generic backend keeps tokenizer.json's pipeline; Qwen2Tokenizer would rebuild its own.
        "tokenizer_class": "TokenizersBackend",
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in QWEN_SPECIAL_TOKENS if t != "<|endoftext|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "model_max_length": 32768,
    }


def special_tokens_map() -> dict:
    """The `special_tokens_map.json` that older loaders read."""
    return {
        "additional_special_tokens": [t for t in QWEN_SPECIAL_TOKENS if t != "<|endoftext|>"],
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
    }


def write_tokenizer(directory: str | Path, tokenizer: Tokenizer | None = None) -> Tokenizer:
    """Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` into `directory`.

    Builds the tokenizer unless one is given; returns the tokenizer written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    tokenizer.save(str(directory / "tokenizer.json"), pretty=True)
    _write_json(directory / "tokenizer_config.json", tokenizer_config(tokenizer))
    _write_json(directory / "special_tokens_map.json", special_tokens_map())
    return tokenizer


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
