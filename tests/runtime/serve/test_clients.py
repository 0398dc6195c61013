"""Real third-party clients, unchanged, against the server: same ranking and scores as the CLI (1e-5)."""

from __future__ import annotations

import math

import pytest
from serve_helpers import QUERY, TEXTS

TOL = 1e-5


def check(expected: list[dict], got: list[tuple[int, float]], key: str = "probability", n: int | None = None) -> None:
    """``got``: [(index, score)] best first, compared with the CLI's results; it must hold ``n`` results
    (all of ``expected`` unless given), so an empty or short answer never passes."""
    n = len(expected) if n is None else n
    assert 0 < n <= len(expected), (n, len(expected))
    assert len(got) == n, f"expected {n} results, got {len(got)}: {got}"
    assert [i for i, _ in got] == [r["index"] for r in expected][:n]
    for (_, score), r in zip(got, expected):
        assert abs(score - r[key]) <= TOL, (score, r)


def test_cohere_client_v2(live, text_expected):
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(base_url=live.url, api_key=live.key)
    response = client.rerank(model="minireranker", query=QUERY, documents=TEXTS)
    check(text_expected, [(r.index, r.relevance_score) for r in response.results])
    top = client.rerank(model="minireranker", query=QUERY, documents=TEXTS, top_n=2)
    check(text_expected, [(r.index, r.relevance_score) for r in top.results], n=2)
    assert len(top.results) == 2


def test_cohere_client_wrong_key_is_unauthorized(live):
    cohere = pytest.importorskip("cohere")
    from cohere.errors import UnauthorizedError

    with pytest.raises(UnauthorizedError):
        cohere.ClientV2(base_url=live.url, api_key="wrong").rerank(model="m", query=QUERY, documents=TEXTS)


def test_infinity_client(live, text_expected):
    pytest.importorskip("infinity_client")
    from infinity_client import AuthenticatedClient
    from infinity_client.api.default import rerank
    from infinity_client.models import RerankInput

    client = AuthenticatedClient(base_url=live.url, token=live.key, raise_on_unexpected_status=True)
    result = rerank.sync(client=client, body=RerankInput.from_dict(
        {"query": QUERY, "documents": TEXTS, "return_documents": True}))
    check(text_expected, [(r.index, r.relevance_score) for r in result.results])
    assert result.results[0].document == {"text": TEXTS[result.results[0].index]}
    assert result.usage.total_tokens > 0


def test_jina_haystack_ranker(live, text_expected):
    pytest.importorskip("haystack_integrations.components.rankers.jina")
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.jina import JinaRanker

    ranker = JinaRanker(api_key=Secret.from_token(live.key), base_url=live.url + "/v1/rerank", top_k=3)
    docs = [Document(content=t) for t in TEXTS]
    out = ranker.run(query=QUERY, documents=docs)["documents"]
    got = [(TEXTS.index(d.content), d.score) for d in out]
    assert len(out) == 3  # top_k
    check(text_expected, got, n=3)


def test_tei_body_gets_a_bare_list(live, text_expected):
    status, body = live.call("POST", "/rerank", {"query": QUERY, "texts": TEXTS, "raw_scores": True,
                                                 "return_text": True})
    assert status == 200 and isinstance(body, list)
    check(text_expected, [(r["index"], r["score"]) for r in body], key="score")
    assert body[0]["text"] == TEXTS[body[0]["index"]]
    status, body = live.call("POST", "/rerank", {"query": QUERY, "texts": TEXTS})
    check(text_expected, [(r["index"], r["score"]) for r in body])


def test_relevance_score_is_the_sigmoid_of_the_raw_score(live):
    status, body = live.call("POST", "/v2/rerank", {"query": QUERY, "documents": TEXTS})
    assert status == 200
    for r in body["results"]:
        assert abs(r["relevance_score"] - 1 / (1 + math.exp(-r["score"]))) < 1e-12
