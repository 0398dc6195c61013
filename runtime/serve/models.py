"""The request and response bodies of ``minireranker serve`` as pydantic models: the ``/openapi.json`` schema.

The server validates bodies with runtime/serve/api.py (its messages name the field and the flag to
change, and its limits answer 413); these models state the same shapes for clients and generators, and
tests/runtime/serve/test_openapi.py checks that every body the server accepts or answers fits them.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class DocumentIn(BaseModel):
    """A document with content (scored under its content hash) or an indexed ``id``."""

    model_config = ConfigDict(extra="forbid")
    id: Optional[str] = Field(None, min_length=1, max_length=256,
                              description="an id indexed by POST /v1/documents (ignored for lookup when content is given)")
    text: Optional[str] = Field(None, min_length=1)
    image: Optional[str] = Field(None, description="data URI, bare base64, or a URL under an --allow-url-prefix")


class RerankBody(_Open):
    """Cohere v2 / Jina / Infinity body (``documents``) or TEI's (``texts``)."""

    query: str = Field(min_length=1)
    documents: Optional[list[Union[str, DocumentIn]]] = Field(None, min_length=1)
    texts: Optional[list[str]] = Field(None, min_length=1, description="TEI: answered with a bare list")
    model: Optional[str] = None
    top_n: Optional[int] = Field(None, ge=1)
    return_documents: Optional[bool] = False
    return_text: Optional[bool] = False
    raw_scores: Optional[bool] = False
    truncate: Optional[bool] = Field(False, description="cut texts over --max-document-tokens instead of a 413")


class RerankResult(BaseModel):
    index: int
    relevance_score: float = Field(description="sigmoid(logit(yes) - logit(no))")
    score: float = Field(description="the raw logit(yes) - logit(no)")
    document: Optional[dict[str, Any]] = None


class RerankResponse(_Open):
    id: str
    object: Literal["rerank"]
    created: int
    model: str
    results: list[RerankResult]
    usage: dict[str, int]
    meta: dict[str, Any]


class TeiResult(BaseModel):
    index: int
    score: float
    text: Optional[str] = None


class IndexDocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=256)
    text: Optional[str] = Field(None, min_length=1)
    image: Optional[str] = None


class IndexBody(BaseModel):
    documents: list[IndexDocumentIn] = Field(min_length=1)


class IndexFailure(BaseModel):
    index: int
    id: Optional[str]
    status: int = Field(description="413 or 422: what a request of this document alone would answer")
    error: str


class IndexResponse(BaseModel):
    indexed: int
    skipped: int
    failed: list[IndexFailure]


class DocumentStatus(BaseModel):
    id: str
    cached: Literal[True]


class DocumentDeleted(BaseModel):
    id: str
    deleted: Literal[True]


class Health(_Open):
    status: str
    model: Optional[str] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    capabilities: list[str]
    max_client_batch_size: int
    max_query_tokens: int
    max_document_tokens: Optional[int]


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Info(BaseModel):
    """TEI's ``GET /info`` subset."""

    model_id: str
    model_type: dict[str, Any]
    max_client_batch_size: int
    max_input_length: Optional[int]
    version: str


class ErrorBody(_Open):
    """Every error: what Jina-style clients read; ``failed`` on a POST /v1/documents that indexed none."""

    detail: str
