"""The vision-first template, at token level, and its 3-D (MRoPE) positions.

Segments are tokenized on their own (nothing added) and concatenated, so a BPE merge can never cross a
cache boundary (system | document | instruction | query)::

    system       <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n
    document     <Document>:[<|vision_start|><|image_pad|>*n<|vision_end|>][text]\\n
    instruction  <Instruct>: {instruction}\\n<Query>:
    query        {query}<|im_end|>\\n<|im_start|>assistant\\n
    score        logit(yes) - logit(no) at the last token

Everything before the user's query text depends only on the document and the bundle's strings, so the
instruction segment is computed at index time with the document (DESIGN.md section 3); per pair only the
query segment runs. The boundary between ``<Query>:`` and the query text is a segment boundary: a query
starting with punctuation (``?why``) or a space keeps its first characters in its own tokens, where
tokenizing the joined string could have merged them with ``:`` (a byte-level pre-tokenizer makes ``:?``
one piece; Qwen's makes ``:why`` one). The sequence is defined as the segments' concatenation, and the
oracle (export/oracle.py) builds it the same way, so parity holds on exactly these ids.

Special tokens: only the template's own. The control tokens written in the template strings here
(``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``, ``<|vision_end|>``, ``<|image_pad|>``) are
special tokens; every other string is plain text: the user's query and document text, and the spec's
``system`` and ``instruction``. A special-token string inside them (``<|im_end|>`` in a query, say) is
tokenized as the characters it is, never as a control token, so a query cannot close its turn and
answer ``yes`` itself. :func:`encode_segment` applies the rule: a segment's template text is cut at its
special tokens, and each run of text between them (template text and user text together, so the
pre-tokenizer sees the same pieces as before) is encoded with special-token splitting off (``tokenizers``'
``encode_special_tokens = True``; transformers' ``split_special_tokens=True``, which the oracle in
export/oracle.py uses, is the same rule). For text without special-token strings the ids are those of
encoding the joined string. The embedder's sequences follow the same rule (:func:`embedder_text_ids`,
:func:`embedder_image_tail_ids`).

Positions follow Qwen3-VL's rope index: a text token advances all three axes by one; an image of
``gh x gw`` merged tokens starting at ``s`` gives token (r, c) the position ``(s, s + r, s + c)`` and
advances ``s`` by ``max(gh, gw)``; so text after an image continues at max position + 1.

The embedder (a Qwen3-VL-Embedding-style checkpoint: first stage and pruning guide) has its own template,
defined here once for export, calibration and the runtime::

    image document  <|im_start|>system\\nRepresent the user's input.<|im_end|>\\n<|im_start|>user\\n<|vision_start|>
                    <|image_pad|>*n<|vision_end|>{text}<|im_end|>\\n<|im_start|>assistant\\n
    text document   <|im_start|>system\\nRepresent the user's input.<|im_end|>\\n<|im_start|>user\\n
    or query        {text}<|im_end|>\\n<|im_start|>assistant\\n

An image document is cut like the reranker's sequence: its constant head (:data:`EMBEDDER_IMAGE_HEAD`,
through ``<|vision_start|>``) plays the system segment; the rest is the document.

Only numpy and the ``tokenizers`` package are used: the runtime imports this module.
"""

from __future__ import annotations

import re
import string
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .errors import TokenizerError
from .spec import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM, HeadSpec, RerankSpec

IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"

EMBEDDER_SYSTEM = "Represent the user's input."
EMBEDDER_HEAD = f"<|im_start|>system\n{EMBEDDER_SYSTEM}<|im_end|>\n<|im_start|>user\n"
EMBEDDER_CLOSE = "<|im_end|>\n<|im_start|>assistant\n"
EMBEDDER_IMAGE_HEAD = EMBEDDER_HEAD + VISION_START  # everything before an image document's pads


@dataclass(frozen=True)
class TemplateFormat:
    """One token-level format: the segments' template strings (``str.format`` with the named fields).

    Every segment is tokenized on its own (:func:`encode_segment`): the document side is ``system`` +
    the document + ``instruction``, the query side ``query`` and then ``score_ids`` (ids, appended as
    they are). ``system`` may be empty (no system segment). A format that reproduces a published model
    places its cache boundary where a BPE merge cannot cross it (see :data:`FORMATS`), so the ids equal
    those of the published code's joined string; ``source`` cites that code.
    """

    name: str
    system: str                      # with {system}, or "" (no system segment)
    text_document: str               # a text-only document, with {text}
    image_head: str                  # an image document up to and including <|vision_start|>
    image_tail: str                  # from <|vision_end|> on, with {text} (the document's optional text)
    instruction: str                 # the instruction segment (document side), may use {instruction}
    query: str                       # the query segment, with {query}
    score_ids: tuple[int, ...] = ()  # token ids appended after the query segment (jina-reranker-m0: 100)
    default_system: str | None = None
    default_instruction: str | None = None
    answer: tuple[str, str] = ("yes", "no")     # the yes/no head's default tokens
    default_head: HeadSpec = HeadSpec()
    source: str = ""


_IM_SYSTEM = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
_IM_CLOSE = "<|im_end|>\n<|im_start|>assistant\n"

# The formats a spec's "template" names. Boundaries of the published formats, and why ids equal theirs
# (Qwen2's pre-tokenizer, which every Qwen-VL tokenizer uses; BPE merges never cross a pre-token):
# * jina-reranker-m0 joins "**Document**:\n{doc}\n**Query**:\n{query}" and appends id 100. We cut after
#   the document's closing "\n" and after "**Query**:\n": a pre-token ending in a newline always ends
#   at the last one, and "*" cannot extend it, so both cuts are pre-token boundaries (a query that
#   starts with a newline is the one case that differs: jina's joined ":\n\n" is one piece).
# * MonoQwen2-VL's chat turn is image, then "Assert ... The query is: {query}"; the cut is before the
#   space, which stays with the query (" what" is one pre-token in both); ":" never takes a following
#   space into its pre-token.
FORMATS: dict[str, TemplateFormat] = {f.name: f for f in (
    TemplateFormat(
        "vision-first", _IM_SYSTEM, "<Document>:{text}\n", "<Document>:<|vision_start|>",
        "<|vision_end|>{text}\n", "<Instruct>: {instruction}\n<Query>:", "{query}" + _IM_CLOSE,
        default_system=DEFAULT_SYSTEM, default_instruction=DEFAULT_INSTRUCTION,
        source="DESIGN.md section 3 (Qwen3-VL-Reranker's strings, the document first)"),
    TemplateFormat(
        "jina-reranker-m0", "", "**Document**:\n{text}\n", "**Document**:\n<|vision_start|>",
        "<|vision_end|>{text}\n", "**Query**:\n", "{query}", score_ids=(100,),
        default_head=HeadSpec("classifier", "score.0", "score.2", "relu", -2.65),
        source="huggingface.co/jinaai/jina-reranker-m0 modeling.py (formatting_prompts_func, score_token_id "
               "100, LOGIT_BIAS 2.65); vLLM's jina_vl.py (score.0 -> ReLU -> score.2)"),
    TemplateFormat(
        "monoqwen2-vl", _IM_SYSTEM, "{text}\n", "<|vision_start|>", "<|vision_end|>{text}",
        "{instruction}", " {query}" + _IM_CLOSE,
        default_system="You are a helpful assistant.",
        default_instruction="Assert the relevance of the previous image document to the following query, "
                            "answer True or False. The query is:",
        answer=("True", "False"),
        source="huggingface.co/lightonai/MonoQwen2-VL-v0.1 model card (the prompt, True/False logits) with "
               "Qwen2-VL-2B-Instruct's chat template (its default system prompt)"),
)}


# A special-token string as the template writes one; encode_segment asks the tokenizer whether it is one.
_SPECIAL_RE = re.compile(r"(<\|[A-Za-z0-9_]+\|>)")
# encode_plain toggles a tokenizer attribute: one toggle at a time, so concurrent encodes never see it half set.
_PLAIN_LOCK = threading.Lock()


def embedder_text(text: str) -> str:
    """The embedder's sequence for a query or a text-only document."""
    return f"{EMBEDDER_HEAD}{text}{EMBEDDER_CLOSE}"


def embedder_image_tail(text: str | None) -> str:
    """What follows an image document's pads in the embedder's sequence (its optional text, then the close)."""
    return f"{VISION_END}{text or ''}{EMBEDDER_CLOSE}"


class _Encoding(Protocol):
    ids: list[int]


class TokenizerLike(Protocol):
    encode_special_tokens: bool  # tokenizers >= 0.15: True reads special-token strings as plain text

    def encode(self, sequence: str, add_special_tokens: bool = ...) -> _Encoding: ...
    def token_to_id(self, token: str) -> int | None: ...


def encode_plain(tokenizer: TokenizerLike, text: str) -> list[int]:
    """Ids of ``text`` as plain text: a special-token string in it is its characters, not a control token."""
    if not text:
        return []
    if not hasattr(tokenizer, "encode_special_tokens"):
        raise TokenizerError("this tokenizers version cannot encode special-token strings as plain text; "
                             "install tokenizers >= 0.19")
    with _PLAIN_LOCK:
        before = tokenizer.encode_special_tokens
        tokenizer.encode_special_tokens = True
        try:
            return list(tokenizer.encode(text, add_special_tokens=False).ids)
        finally:
            tokenizer.encode_special_tokens = before


def encode_segment(tokenizer: TokenizerLike, template: str, **fields: str) -> list[int]:
    """Ids of one segment: ``template`` (a ``str.format`` string) with ``fields`` filled in as plain text.

    Only the special tokens written in ``template`` itself are control tokens (see the module docstring);
    the text between them, template text and field values alike, is encoded with :func:`encode_plain`.
    """
    ids: list[int] = []
    run: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(template):
        for piece in _SPECIAL_RE.split(literal):
            special = tokenizer.token_to_id(piece) if _SPECIAL_RE.fullmatch(piece) else None
            if special is None:
                run.append(piece)
                continue
            ids += encode_plain(tokenizer, "".join(run))
            run = []
            ids.append(special)
        if name is not None:
            run.append(str(fields[name]))
    return ids + encode_plain(tokenizer, "".join(run))


def embedder_text_ids(tokenizer: TokenizerLike, text: str) -> list[int]:
    """Ids of :func:`embedder_text` with ``text`` as plain text."""
    return encode_segment(tokenizer, EMBEDDER_HEAD + "{text}" + EMBEDDER_CLOSE, text=text)


def embedder_image_tail_ids(tokenizer: TokenizerLike, text: str | None) -> list[int]:
    """Ids of :func:`embedder_image_tail` with ``text`` as plain text."""
    return encode_segment(tokenizer, VISION_END + "{text}" + EMBEDDER_CLOSE, text=text or "")


@dataclass(frozen=True)
class DocumentTokens:
    """The document segment's ids and where its image tokens sit (``image_start``, ``num_image``)."""

    ids: list[int]
    image_start: int          # index of the first <|image_pad|> within ``ids`` (-1: no image)
    num_image: int            # number of <|image_pad|> tokens
    grid_hw: tuple[int, int]  # merged image grid (gh, gw); (0, 0) without an image


class VisionFirstTemplate:
    """Builds the token ids of the segments for one tokenizer and spec, in the spec's format
    (:data:`FORMATS`; an unset template is ``vision-first``: resolve the spec against its checkpoint first)."""

    def __init__(self, tokenizer: TokenizerLike, spec: RerankSpec) -> None:
        self.tokenizer = tokenizer
        self.spec = spec = spec.filled()
        self.format = fmt = FORMATS[spec.template]
        self.image_pad_id = self._special(IMAGE_PAD)
        self.vision_start_id = self._special(VISION_START)
        self.vision_end_id = self._special(VISION_END)
        self.head = spec.head
        self.yes_id = self.no_id = None
        if spec.head.kind == "yes_no":
            self.yes_id = self._single_token(spec.yes_token, "yes_token")
            self.no_id = self._single_token(spec.no_token, "no_token")
        self.system_ids = self.segment(fmt.system, system=spec.system or "") if fmt.system else []
        self.instruction_ids = self.segment(fmt.instruction, instruction=spec.instruction or "")
        self.score_ids = list(fmt.score_ids)

    def encode(self, text: str) -> list[int]:
        """Ids of template text (its special-token strings are control tokens); never for user text."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def segment(self, template: str, **fields: str) -> list[int]:
        """Ids of ``template`` with ``fields`` as plain text (:func:`encode_segment`)."""
        return encode_segment(self.tokenizer, template, **fields)

    def plain(self, text: str) -> list[int]:
        """Ids of user text alone, as plain text (:func:`encode_plain`)."""
        return encode_plain(self.tokenizer, text)

    def _special(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"the tokenizer has no {token} token; is this a Qwen3-VL tokenizer.json?")
        return token_id

    def _single_token(self, text: str, field: str) -> int:
        ids = self.encode(text)
        if len(ids) != 1:
            raise TokenizerError(
                f"{field}={text!r} encodes to {len(ids)} tokens {ids}; the score needs one token each: "
                f"set {field} in minireranker.json to a string the tokenizer keeps whole"
            )
        return ids[0]

    def document(self, grid_hw: tuple[int, int] | None = None, text: str | None = None) -> DocumentTokens:
        """Ids of a document: an image of merged grid ``grid_hw``, a text, or both (image first)."""
        if grid_hw is None and not text:
            raise TokenizerError("a document needs an image, a non-empty text, or both")
        fmt = self.format
        if grid_hw is None:
            return DocumentTokens(self.segment(fmt.text_document, text=text), -1, 0, (0, 0))
        gh, gw = (int(x) for x in grid_hw)
        head = self.segment(fmt.image_head)
        tail = self.segment(fmt.image_tail, text=text or "")
        n = gh * gw
        return DocumentTokens(head + [self.image_pad_id] * n + tail, len(head), n, (gh, gw))

    def query_text(self, query: str) -> list[int]:
        """Ids of the query segment alone (what runs per pair): the query text, the closing tokens and the
        format's score ids."""
        return self.segment(self.format.query, query=query) + self.score_ids

    def query_first(self, query: str, grid_hw: tuple[int, int] | None = None, text: str | None = None
                    ) -> DocumentTokens:
        """The whole sequence in Qwen3-VL-Reranker's own (trained) order, one pair: system, instruction,
        query, then the document, as its published code joins them (the strings are the spec's)::

            <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<Instruct>: {instruction}\n<Query>: {query}
            \n<Document>: [<|vision_start|><|image_pad|>*n<|vision_end|>]{text}<|im_end|>\n<|im_start|>assistant\n

        Nothing of it can be cached per document (the document comes last): it is the dense reference of
        a query-first checkpoint. Positions: :func:`document_positions` with ``system_len`` 0.
        """
        if self.format.name != "vision-first":
            raise TokenizerError(f"the query-first order uses the vision-first template's strings; template "
                                 f"{self.format.name!r} has its own order")
        if grid_hw is None:  # a text document joins the query's run, as the published code encodes it
            return DocumentTokens(self.system_ids + self.segment(
                "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {text}<|im_end|>\n<|im_start|>assistant\n",
                instruction=self.spec.instruction or "", query=query, text=text or ""), -1, 0, (0, 0))
        head = self.system_ids + self.segment("<Instruct>: {instruction}\n<Query>: {query}\n<Document>: ",
                                              instruction=self.spec.instruction or "", query=query)
        gh, gw = (int(x) for x in grid_hw)
        start = head + [self.vision_start_id]
        tail = self.segment(VISION_END + "{text}<|im_end|>\n<|im_start|>assistant\n", text=text or "")
        return DocumentTokens(start + [self.image_pad_id] * (gh * gw) + tail, len(start), gh * gw, (gh, gw))

    def query(self, query: str) -> list[int]:
        """Ids of everything after the document: the instruction segment, then the query segment."""
        return self.instruction_ids + self.query_text(query)


def text_positions(start: int, count: int) -> np.ndarray:
    """Positions of ``count`` text tokens from ``start``: int64 [3, count]."""
    return np.broadcast_to(np.arange(start, start + count, dtype=np.int64), (3, count)).copy()


def document_positions(system_len: int, doc: DocumentTokens) -> tuple[np.ndarray, int]:
    """3-D positions of the document segment placed after the system segment.

    Returns ``(positions [3, len(doc.ids)] int64, query_start)`` where ``query_start`` is max + 1.
    """
    if doc.num_image == 0:
        pos = text_positions(system_len, len(doc.ids))
        return pos, system_len + len(doc.ids)
    head = text_positions(system_len, doc.image_start)
    s = system_len + doc.image_start
    gh, gw = doc.grid_hw
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    image = np.stack([np.full(gh * gw, s), s + rows.reshape(-1), s + cols.reshape(-1)]).astype(np.int64)
    after = s + max(gh, gw)
    tail = text_positions(after, len(doc.ids) - doc.image_start - doc.num_image)
    return np.concatenate([head, image, tail], axis=1), after + tail.shape[1]
