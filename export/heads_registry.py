"""Which format and head a checkpoint's own class implies (torch-free: read when a checkpoint is opened).

A ranking class replaces the LM head, so the yes/no rows would score with the wrong head: its checkpoint
gets its published format (and so that format's head) unless minireranker.json says otherwise.

=====================  ==================  ==================================================
config.json class      format              head
=====================  ==================  ==================================================
JinaVLForRanking       jina-reranker-m0    score.0 -> ReLU -> score.2, probability sigmoid(s - 2.65)
any other (accepted)   vision-first        yes/no rows of the LM head
=====================  ==================  ==================================================
"""

from __future__ import annotations

from typing import Any

RANKING_CLASSES: dict[str, str] = {"JinaVLForRanking": "jina-reranker-m0"}


def default_template(raw_config: dict[str, Any]) -> str:
    """The format a checkpoint without a "template" in minireranker.json gets, from its config.json."""
    for name in raw_config.get("architectures") or []:
        if name in RANKING_CLASSES:
            return RANKING_CLASSES[name]
    return "vision-first"


def replaces_lm_head(raw_config: dict[str, Any]) -> bool:
    """True when the checkpoint's class has no usable LM head (a ranking class)."""
    return any(name in RANKING_CLASSES for name in raw_config.get("architectures") or [])
