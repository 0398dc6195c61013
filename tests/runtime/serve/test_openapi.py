"""/openapi.json documents the API with the pydantic models of runtime/serve/models.py, and what the server
accepts and answers fits those models (so the schema cannot drift from the handlers); /v1/models and /info."""

from __future__ import annotations

import pytest

from serve_helpers import QUERY, TEXTS


def test_openapi_lists_every_route_and_the_bodies(live):
    status, schema = live.call("GET", "/openapi.json")
    assert status == 200 and schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for route in ("/rerank", "/v1/rerank", "/v2/rerank", "/v1/documents", "/v1/documents/{doc_id}", "/v1/models",
                  "/info", "/health", "/v1/health/ready", "/v1/health/live", "/metrics"):
        assert route in paths, route
    body = paths["/v1/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    components = schema["components"]["schemas"]
    assert body.rsplit("/", 1)[1] in components and "DocumentIn" in components and "IndexBody" in components
    assert "RerankResponse" in components and "ErrorBody" in components
    assert live.call("GET", "/openapi.json", headers={"Authorization": ""})[0] == 401  # behind the key too


@pytest.mark.parametrize("body", [
    {"query": QUERY, "documents": TEXTS, "top_n": 2, "return_documents": True},
    {"query": QUERY, "documents": [{"text": TEXTS[0]}, TEXTS[1]], "model": "m"},
    {"query": QUERY, "texts": TEXTS, "raw_scores": True, "return_text": True},
    {"query": QUERY, "texts": TEXTS, "truncate": True},
])
def test_requests_and_answers_fit_the_models(live, body):
    from minireranker.runtime.serve import models

    models.RerankBody.model_validate(body)
    status, answer = live.call("POST", "/v1/rerank", body)
    assert status == 200, answer
    if "texts" in body:
        assert [models.TeiResult.model_validate(r) for r in answer]
    else:
        assert models.RerankResponse.model_validate(answer).results


def test_index_and_error_answers_fit_the_models(live):
    from minireranker.runtime.serve import models

    body = {"documents": [{"id": "openapi-1", "text": "a document"}, {"id": "openapi-2", "image": "bm90IGFuIGltYWdl"}]}
    models.IndexBody.model_validate(body)
    status, answer = live.call("POST", "/v1/documents", body)
    assert status == 200 and models.IndexResponse.model_validate(answer).failed[0].index == 1
    models.DocumentStatus.model_validate(live.call("GET", "/v1/documents/openapi-1")[1])
    status, answer = live.call("POST", "/v1/rerank", {"query": ""})
    assert status == 422 and models.ErrorBody.model_validate(answer).detail


def test_models_and_info(live):
    from minireranker.runtime.serve import models

    status, answer = live.call("GET", "/v1/models")
    assert status == 200
    card = models.ModelList.model_validate(answer).data[0]
    config = live.server.service.config
    assert card.id == config.model_name and card.max_client_batch_size == config.limits.max_client_batch_size
    assert card.max_document_tokens == getattr(live.server.service.reranker, "max_document_tokens", None)
    status, answer = live.call("GET", "/info")
    assert status == 200 and models.Info.model_validate(answer).model_id == config.model_name
    assert live.call("GET", "/v1/models", headers={"Authorization": ""})[0] == 401
