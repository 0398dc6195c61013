"""Images through a raw HTTP body, and indexed documents by id: same scores as the CLI (1e-5)."""

from __future__ import annotations

import base64

from serve_helpers import cli_scores, data_uri, png_bytes

TOL = 1e-5
QUERY = "an astronaut"


def test_images_by_data_uri_and_base64_equal_the_cli(live, tiny_bundle, tmp_path, images):
    names = ["astronaut_70x45", "chelsea_128x100", "camera_grey_90x120"]
    paths = []
    for name in names:
        paths.append(tmp_path / f"{name}.png")
        paths[-1].write_bytes(png_bytes(images[name]))
    expected = cli_scores(tiny_bundle, tmp_path / "cli", QUERY,
                          [str(paths[0]), f"{paths[1]}::text:a cat on a sofa", str(paths[2]), "text:a rocket"])
    docs = [{"image": data_uri(images[names[0]])},
            {"image": base64.b64encode(png_bytes(images[names[1]])).decode(), "text": "a cat on a sofa"},
            {"image": data_uri(images[names[2]])}, "a rocket"]
    status, body = live.call("POST", "/v1/rerank", {"query": QUERY, "documents": docs, "return_documents": True})
    assert status == 200, body
    assert [r["index"] for r in body["results"]] == [r["index"] for r in expected]
    for got, want in zip(body["results"], expected):
        assert abs(got["score"] - want["score"]) <= TOL and abs(got["relevance_score"] - want["probability"]) <= TOL
    assert body["results"][[r["index"] for r in body["results"]].index(1)]["document"] == {"text": "a cat on a sofa"}


def test_index_then_rerank_by_id_then_delete(live, images):
    doc_id = "../../etc/passwd"  # opaque: hashed by the store, never a path
    status, body = live.call("POST", "/v1/documents", {"documents": [
        {"id": doc_id, "image": data_uri(images["rocket_128x128"])}, {"id": "note-1", "text": "a rocket"}]})
    assert status == 200 and body["indexed"] == 2 and not body["failed"], body
    quoted = "..%2F..%2Fetc%2Fpasswd"
    assert live.call("GET", f"/v1/documents/{quoted}") == (200, {"id": doc_id, "cached": True})
    status, again = live.call("POST", "/v1/documents", {"documents": [{"id": "note-1", "text": "a rocket"}]})
    assert again["skipped"] == 1
    inline = {"image": data_uri(images["rocket_128x128"])}
    status, by_id = live.call("POST", "/v1/rerank", {"query": "a rocket", "documents": [{"id": doc_id}, {"id": "note-1"}]})
    status2, by_content = live.call("POST", "/v1/rerank", {"query": "a rocket", "documents": [inline, "a rocket"]})
    assert status == status2 == 200
    assert [r["index"] for r in by_id["results"]] == [r["index"] for r in by_content["results"]]
    assert all(abs(a["score"] - b["score"]) <= TOL for a, b in zip(by_id["results"], by_content["results"]))
    assert live.call("DELETE", f"/v1/documents/{quoted}")[0] == 200
    assert live.call("GET", f"/v1/documents/{quoted}")[0] == 404
    assert live.call("DELETE", f"/v1/documents/{quoted}")[0] == 404
    status, body = live.call("POST", "/v1/rerank", {"query": "a rocket", "documents": [{"id": doc_id}]})
    assert status == 404 and "POST /v1/documents" in body["detail"]


def test_nothing_is_written_outside_the_cache(live, tmp_path):
    cache = live.server.service.config.cache.resolve()
    before = {p for p in tmp_path.parent.rglob("*")} - {p for p in tmp_path.parent.rglob("*") if cache in p.parents}
    live.call("POST", "/v1/documents", {"documents": [{"id": str(tmp_path / "x.kv"), "text": "t"},
                                                      {"id": "/" + "a" * 200, "text": "u"}]})
    after = {p for p in tmp_path.parent.rglob("*")} - {p for p in tmp_path.parent.rglob("*") if cache in p.parents}
    assert after == before
    assert not (tmp_path / "x.kv").exists()
