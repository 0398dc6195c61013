"""The oracle: Hugging Face transformers' own model, with nothing of ours in the arithmetic.

* Exact spec: the class the architecture's adapter names (``Qwen3VLForConditionalGeneration``) on the
  full vision-first sequence (transformers' tokenizer, image processor, rope index and attention),
  score = logit(yes) - logit(no) at the last token.
* Approximate specs: the same model, with

  - a layer-dependent mask through transformers' attention interface (the registered attention function
    sees ``module.layer_idx``): outside layers ``A..B`` query rows cannot see document columns;
  - pruned visual tokens dropped from the sequence (and from the DeepStack features), every remaining
    token keeping its position from transformers' rope index (the query's replaced by the spec's fixed
    ``query_position`` when there is one);
  - the hidden state read at the output of layer ``E`` through the final norm and the head.

* The sequence is the spec's format (runtime/template.py ``FORMATS``), tokenized segment by segment
  with transformers' tokenizer: the format's special tokens are control tokens, all other text plain
  (``split_special_tokens=True``). Heads: ``yes_no`` reads transformers' own ``lm_head``; a classifier
  (jina-reranker-m0's ``score`` MLP, which no transformers class holds) is Linear -> activation -> Linear
  written here with torch's functional ops, on the tensors read straight from the safetensors files,
  over transformers' normed last hidden state.

Used by the tests (parity) and by nothing at run time.
"""

from __future__ import annotations

import contextlib
import re
import string
from pathlib import Path

import numpy as np
import torch

from ..runtime.documents import Document
from ..runtime.spec import HeadSpec, RerankSpec
from ..runtime.template import FORMATS

_BAND_ATTENTION = "minireranker_band"
_SPECIAL = re.compile(r"(<\|[A-Za-z0-9_]+\|>)")
_active_mask: dict[int, torch.Tensor] = {}


def _band_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention with the mask of ``module.layer_idx`` from :data:`_active_mask`."""
    visible = _active_mask[module.layer_idx]  # bool [T, T]
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = (query @ key.transpose(2, 3)) * scaling
    scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return (probs @ value).transpose(1, 2).contiguous(), probs


def _transformers_model(directory: str | Path) -> torch.nn.Module:
    """transformers' own model of the checkpoint's architecture (the class its adapter names), float32, eval."""
    import json

    import transformers

    from .arch import architecture_for

    model_type = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8")).get("model_type")
    model_class = getattr(transformers, architecture_for(model_type).transformers_class)
    return model_class.from_pretrained(directory, dtype=torch.float32).eval()


class TransformersOracle:
    """Scores (query, document) pairs with transformers for a checkpoint and a spec."""

    def __init__(self, checkpoint_dir: str | Path, spec: RerankSpec | None = None) -> None:
        from transformers import AttentionInterface, AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        AttentionInterface.register(_BAND_ATTENTION, _band_attention)
        self.dir = Path(checkpoint_dir)
        self.model = _transformers_model(self.dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.dir)
        self.special = set(self.tokenizer.all_special_tokens) | set(self.tokenizer.get_added_vocab())
        self.processor = Qwen2VLImageProcessorPil.from_pretrained(self.dir)
        num_layers = self.model.config.text_config.num_hidden_layers
        # the spec as the pipeline resolves it: unset format fields from minireranker.json, then the class
        from .checkpoint import open_checkpoint

        self.spec = open_checkpoint(self.dir, spec).spec
        self.exact = self.spec.is_exact(num_layers)
        self.format = FORMATS[self.spec.template]
        self.head = self.spec.head
        if self.head.kind == "yes_no":
            self.yes = self._one(self.spec.yes_token)
            self.no = self._one(self.spec.no_token)
        else:
            self.head_weights = _safetensors_tensors(self.dir, _head_names(self.head))

    def _one(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) == 1, f"{text!r} is not one token"
        return ids[0]

    def _ids(self, text: str) -> list[int]:
        """Template text: its special-token strings are control tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _plain(self, text: str) -> list[int]:
        """Text between the template's special tokens (user and spec text included): special-token strings
        in it stay plain text (runtime/template.py's rule, transformers' split_special_tokens)."""
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True) if text else []

    def _segment(self, template: str, **fields: str) -> list[int]:
        """One segment: ``template``'s own special-token strings are control tokens; the rest, the fields'
        values included, is plain text, each run between special tokens encoded as one string."""
        out: list[int] = []
        run = ""
        for literal, name, _, _ in string.Formatter().parse(template):
            for piece in _SPECIAL.split(literal):
                if _SPECIAL.fullmatch(piece) and piece in self.special:
                    out += self._plain(run) + self._ids(piece)
                    run = ""
                else:
                    run += piece
            if name is not None:
                run += str(fields[name])
        return out + self._plain(run)

    def build(self, query: str, doc: Document) -> dict:
        """Token ids (segments of the spec's format), pixel values, grid, token types and segment lengths."""
        spec, fmt = self.spec, self.format
        system = self._segment(fmt.system, system=spec.system or "") if fmt.system else []
        inputs: dict = {}
        if doc.image is not None:
            from ..runtime.preprocess import load_image  # PIL loading only; the pixels are transformers'

            feats = self.processor(images=[load_image(doc.image)], return_tensors="pt")
            inputs["pixel_values"], inputs["image_grid_thw"] = feats["pixel_values"], feats["image_grid_thw"]
            n = int(feats["image_grid_thw"].prod()) // self.model.config.vision_config.spatial_merge_size**2
            doc_ids = self._segment(fmt.image_head + "<|image_pad|>" * n) \
                + self._segment(fmt.image_tail, text=doc.text or "")
        else:
            doc_ids = self._segment(fmt.text_document, text=doc.text or "")
        # the instruction and the query are separate segments (runtime/template.py): tokenized apart, so a
        # query starting with punctuation never merges with the instruction's end
        query_ids = self._segment(fmt.instruction, instruction=spec.instruction or "")
        query_ids += self._segment(fmt.query, query=query) + list(fmt.score_ids)
        ids = torch.tensor([system + doc_ids + query_ids])
        inputs["input_ids"] = ids
        inputs["mm_token_type_ids"] = (ids == self.model.config.image_token_id).int()
        inputs["segments"] = (len(system), len(doc_ids), len(query_ids))
        return inputs

    @torch.no_grad()
    def score_query_first(self, query: str, doc: Document) -> float:
        """The dense score in Qwen3-VL-Reranker's own order (system, instruction, query, then the document),
        the whole prompt joined as its published code builds it; the model's own rope index and attention."""
        spec = self.spec
        system = self._segment(self.format.system, system=spec.system or "")
        head = f"<Instruct>: {spec.instruction}\n<Query>: {query}\n<Document>: "
        inputs: dict = {}
        if doc.image is not None:
            from ..runtime.preprocess import load_image

            feats = self.processor(images=[load_image(doc.image)], return_tensors="pt")
            inputs["pixel_values"], inputs["image_grid_thw"] = feats["pixel_values"], feats["image_grid_thw"]
            n = int(feats["image_grid_thw"].prod()) // self.model.config.vision_config.spatial_merge_size**2
            ids = system + self._plain(head) + self._ids("<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>") \
                + self._plain(doc.text or "")
        else:
            ids = system + self._plain(head + (doc.text or ""))
        ids = torch.tensor([ids + self._ids("<|im_end|>\n<|im_start|>assistant\n")])
        inputs["input_ids"] = ids
        inputs["mm_token_type_ids"] = (ids == self.model.config.image_token_id).int()
        if self.head.kind == "yes_no":
            logits = self.model(**inputs).logits[0, -1]
            return float(logits[self.yes] - logits[self.no])
        return self._classify(self.model.model(**inputs).last_hidden_state[0, -1])

    @torch.no_grad()
    def score(self, query: str, doc: Document, kept_visual: np.ndarray | None = None) -> float:
        inputs = self.build(query, doc)
        segments = inputs.pop("segments")
        if self.exact:
            if self.head.kind == "yes_no":
                logits = self.model(**inputs).logits[0, -1]
                return float(logits[self.yes] - logits[self.no])
            return self._classify(self.model.model(**inputs).last_hidden_state[0, -1])
        return self._score_approximate(inputs, segments, kept_visual)

    def _classify(self, normed: torch.Tensor) -> float:
        """The classifier head on transformers' normed hidden state of the last token."""
        w, h = self.head_weights, self.head
        act = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "tanh": torch.tanh,
               "silu": torch.nn.functional.silu, "identity": lambda x: x}[h.activation]
        x = torch.nn.functional.linear(normed, w[h.linear1 + ".weight"], w.get(h.linear1 + ".bias"))
        if h.kind == "linear":
            return float(x[0])
        return float(torch.nn.functional.linear(act(x), w[h.linear2 + ".weight"], w.get(h.linear2 + ".bias"))[0])

    def _score_approximate(self, inputs: dict, segments: tuple[int, int, int], kept: np.ndarray | None) -> float:
        model, spec = self.model.model, self.spec
        ids = inputs["input_ids"]
        grid = inputs.get("image_grid_thw")
        image_mask = ids[0] == self.model.config.image_token_id
        if grid is not None:
            positions, _ = model.get_rope_index(ids, inputs["mm_token_type_ids"], image_grid_thw=grid)
        else:
            positions = torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, 1, -1).clone()
        s, d, q = segments
        if spec.query_position is not None:
            positions[:, 0, s + d:] = torch.arange(spec.query_position, spec.query_position + q)
        embeds = model.get_input_embeddings()(ids).clone()
        deepstack = None
        if grid is not None:
            feats = model.get_image_features(inputs["pixel_values"], grid, return_dict=True)
            embeds[0, image_mask] = torch.cat(feats.pooler_output, dim=0)
            features = getattr(feats, "deepstack_features", None) or []  # Qwen2-VL, Qwen2.5-VL: none
            deepstack = [torch.cat(f, dim=0) for f in features]
        keep = torch.ones(ids.shape[1], dtype=torch.bool)
        if kept is not None and grid is not None:
            visual = torch.nonzero(image_mask)[:, 0]
            keep[visual] = False
            keep[visual[torch.from_numpy(kept)]] = True
            deepstack = [f[torch.from_numpy(kept)] for f in deepstack] if deepstack else deepstack
            d -= int((~keep).sum())
        embeds, positions, image_mask = embeds[:, keep], positions[:, :, keep], image_mask[keep]
        total = embeds.shape[1]
        causal = torch.ones(total, total, dtype=torch.bool).tril()
        isolated = causal.clone()
        isolated[s + d:, s: s + d] = False  # query rows cannot see document columns
        a, b = spec.band
        masks = {i: causal if a <= i <= b else isolated for i in range(spec.exit_layer + 1)}
        extra = {"visual_pos_masks": image_mask[None], "deepstack_visual_embeds": deepstack} if deepstack else {}
        with self._text_layers(spec.exit_layer + 1, masks):
            out = model.language_model(inputs_embeds=embeds, position_ids=positions, **extra)
        if self.head.kind != "yes_no":
            return self._classify(out.last_hidden_state[0, -1])
        logits = self.model.lm_head(out.last_hidden_state[0, -1])
        return float(logits[self.yes] - logits[self.no])

    @contextlib.contextmanager
    def _text_layers(self, count: int, masks: dict[int, torch.Tensor]):
        """Run only the first ``count`` decoder layers, with the band attention and these masks."""
        lm = self.model.model.language_model
        layers, impl = lm.layers, lm.config._attn_implementation
        lm.layers = torch.nn.ModuleList(list(layers)[:count])
        lm.config._attn_implementation = _BAND_ATTENTION
        _active_mask.clear()
        _active_mask.update(masks)
        try:
            yield
        finally:
            lm.layers = layers
            lm.config._attn_implementation = impl
            _active_mask.clear()

    @torch.no_grad()
    def self_guide_attention(self, doc: Document, layer: int) -> np.ndarray:
        """Eager attentions of the last document token at ``layer``, head-averaged, over visual tokens."""
        inputs = self.build("", doc)
        s, d, _ = inputs.pop("segments")
        ids = inputs["input_ids"][:, : s + d]
        impl = self.model.config.text_config._attn_implementation
        self.model.config.text_config._attn_implementation = "eager"
        try:
            out = self.model(input_ids=ids, pixel_values=inputs["pixel_values"],
                             image_grid_thw=inputs["image_grid_thw"],
                             mm_token_type_ids=inputs["mm_token_type_ids"][:, : s + d], output_attentions=True)
        finally:
            self.model.config.text_config._attn_implementation = impl
        probs = out.attentions[layer][0, :, -1].mean(0)
        return probs[ids[0] == self.model.config.image_token_id].double().numpy()


def _head_names(head: HeadSpec) -> list[str]:
    prefixes = (head.linear1, head.linear2) if head.kind == "classifier" else (head.linear1,)
    return [f"{p}.{kind}" for p in prefixes for kind in ("weight", "bias")]


def _safetensors_tensors(directory: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors, float32, read with safetensors alone (no code of ours between file and oracle)."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name in names:
                    found[name] = f.get_tensor(name).float()
    missing = [n for n in names if n not in found and not n.endswith(".bias")]
    assert not missing, f"the checkpoint has no {missing}"
    return found


@torch.no_grad()
def embedder_guide_attention(embedder_dir: str | Path, doc: Document, layer: int | None = None) -> np.ndarray:
    """transformers' eager attention of an embedder's last token over the visual tokens, head-averaged.

    The embedder's image-document sequence is the embedder template of :mod:`minireranker.runtime.template`.
    """
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from ..runtime.preprocess import load_image
    from ..runtime.template import EMBEDDER_CLOSE, EMBEDDER_IMAGE_HEAD, IMAGE_PAD, VISION_END

    model = _transformers_model(embedder_dir)
    model.config.text_config._attn_implementation = "eager"
    tok = AutoTokenizer.from_pretrained(embedder_dir)
    feats = Qwen2VLImageProcessorPil.from_pretrained(embedder_dir)(images=[load_image(doc.image)], return_tensors="pt")
    n = int(feats["image_grid_thw"].prod()) // model.config.vision_config.spatial_merge_size**2
    head = tok.encode(EMBEDDER_IMAGE_HEAD + IMAGE_PAD * n + VISION_END, add_special_tokens=False)
    text = tok.encode(doc.text, add_special_tokens=False, split_special_tokens=True) if doc.text else []
    ids = torch.tensor([head + text + tok.encode(EMBEDDER_CLOSE, add_special_tokens=False)])
    out = model(input_ids=ids, pixel_values=feats["pixel_values"], image_grid_thw=feats["image_grid_thw"],
                mm_token_type_ids=(ids == model.config.image_token_id).int(), output_attentions=True)
    layer = model.config.text_config.num_hidden_layers - 1 if layer is None else layer
    probs = out.attentions[layer][0, :, -1].mean(0)
    return probs[ids[0] == model.config.image_token_id].double().numpy()
