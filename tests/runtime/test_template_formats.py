"""Template formats (runtime/template.py FORMATS): each published model's preset gives, for sample pairs,
exactly the ids its own code would produce, and specs fill and refuse the formats' strings as documented.

No real tokenizer can be downloaded, so the expected sequence is written out as the published code builds
its prompt (the derivation is in each test's comment), encoded whole by the tiny tokenizer the way that
code's processor encodes it (its special-token strings are control tokens), and compared with the ids our
segments give. The samples include the boundary cases: a document ending in punctuation or a space, a
query starting with punctuation, a space or a digit.
"""

from __future__ import annotations

import pytest

from minireranker.export.tokenizer_factory import build_tokenizer
from minireranker.runtime.errors import SpecError
from minireranker.runtime.spec import HeadSpec, RerankSpec
from minireranker.runtime.template import FORMATS, IMAGE_PAD, VisionFirstTemplate

DOCUMENT_TEXTS = ["a red bus on a city street", "The price is low.", "ends with a space ", "two\nlines"]
QUERIES = ["which picture shows a bus?", "?why", " leading space", "3 cats", "what"]
GRID = (2, 3)  # 6 image tokens


@pytest.fixture(scope="module")
def tokenizer():
    # True/False are MonoQwen2-VL's answers: the corpus gets them at line start so each is one token
    return build_tokenizer(tuple(f"{a}\n{b}" for a, b in [("True", "False"), ("False", "True")] * 20))


def joined(tokenizer, text: str) -> list[int]:
    """The published code's way: the whole prompt encoded at once, special-token strings as control tokens."""
    return tokenizer.encode(text, add_special_tokens=False).ids


def ours(template: VisionFirstTemplate, query: str, text: str | None, grid=None) -> list[int]:
    return template.system_ids + template.document(grid, text).ids + template.query(query)


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("text", DOCUMENT_TEXTS)
def test_jina_reranker_m0_text_pairs(tokenizer, text, query):
    # jina-reranker-m0 modeling.py, compute_score with doc_type="text": formatting_prompts_func gives
    # "**Document**:\n" + doc + "\n" + "**Query**:\n" + query (no system prompt, no chat template, the
    # processor adds no BOS), then score_token_id 100 is appended to input_ids.
    template = VisionFirstTemplate(tokenizer, RerankSpec(template="jina-reranker-m0"))
    expected = joined(tokenizer, f"**Document**:\n{text}\n**Query**:\n{query}") + [100]
    assert ours(template, query, text) == expected
    assert template.system_ids == []


@pytest.mark.parametrize("query", QUERIES)
def test_jina_reranker_m0_image_pairs(tokenizer, query):
    # doc_type="image": "**Document**:\n<|vision_start|><|image_pad|><|vision_end|>" + "\n**Query**:\n" + query;
    # the processor expands <|image_pad|> to one pad per merged token (6 here), then id 100 follows.
    template = VisionFirstTemplate(tokenizer, RerankSpec(template="jina-reranker-m0"))
    pads = IMAGE_PAD * (GRID[0] * GRID[1])
    expected = joined(tokenizer, f"**Document**:\n<|vision_start|>{pads}<|vision_end|>\n**Query**:\n{query}") + [100]
    assert ours(template, query, None, GRID) == expected


def test_jina_reranker_m0_head_and_strings(tokenizer):
    spec = RerankSpec(template="jina-reranker-m0").filled()
    assert spec.head == HeadSpec("classifier", "score.0", "score.2", "relu", -2.65)
    template = VisionFirstTemplate(tokenizer, spec)
    assert template.yes_id is None and template.score_ids == [100]
    with pytest.raises(SpecError, match="no system string"):
        RerankSpec(template="jina-reranker-m0", system="be brief").filled()


@pytest.mark.parametrize("query", QUERIES)
def test_monoqwen2_vl_image_pairs(tokenizer, query):
    # MonoQwen2-VL model card: messages = [{"role": "user", "content": [image, text prompt]}] with the prompt
    # "Assert the relevance of the previous image document to the following query, answer True or False.
    # The query is: {query}", through Qwen2-VL-2B-Instruct's chat template with add_generation_prompt: the
    # template's default system turn "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", the user
    # turn "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" + prompt + "<|im_end|>\n", then
    # "<|im_start|>assistant\n"; the score reads the logits of "True" and "False".
    template = VisionFirstTemplate(tokenizer, RerankSpec(template="monoqwen2-vl"))
    pads = IMAGE_PAD * (GRID[0] * GRID[1])
    prompt = ("Assert the relevance of the previous image document to the following query, answer True or False. "
              f"The query is: {query}")
    expected = joined(tokenizer, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      f"<|vision_start|>{pads}<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n")
    assert ours(template, query, None, GRID) == expected
    assert (template.yes_id, template.no_id) == (joined(tokenizer, "True")[0], joined(tokenizer, "False")[0])


def test_vision_first_is_the_default_and_unchanged(tokenizer):
    default = VisionFirstTemplate(tokenizer, RerankSpec())
    assert default.format is FORMATS["vision-first"] and default.score_ids == []
    assert default.system_ids == joined(tokenizer, f"<|im_start|>system\n{default.spec.system}<|im_end|>\n"
                                                   "<|im_start|>user\n")
    assert default.query("q") == joined(tokenizer, f"<Instruct>: {default.spec.instruction}\n<Query>:") \
        + joined(tokenizer, "q<|im_end|>\n<|im_start|>assistant\n")


def test_spec_round_trip_and_errors():
    spec = RerankSpec(template="jina-reranker-m0").filled()
    assert RerankSpec.from_dict(spec.to_dict()) == spec
    head = {"kind": "classifier", "linear1": "head.a", "linear2": "head.b", "activation": "tanh", "offset": 1}
    assert RerankSpec.from_dict({"head": head}).head == HeadSpec("classifier", "head.a", "head.b", "tanh", 1.0)
    with pytest.raises(SpecError, match="not a known format"):
        RerankSpec(template="colbert")
    with pytest.raises(SpecError, match="linear2"):
        RerankSpec(head={"kind": "classifier", "linear1": "score.0"})
    with pytest.raises(SpecError, match="unknown field"):
        RerankSpec(head={"kind": "yes_no", "bias": 1})
    with pytest.raises(SpecError, match="activation"):
        HeadSpec("classifier", "a", "b", activation="softmax")
