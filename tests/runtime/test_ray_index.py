"""Indexing on Ray (runtime/ray_index.py): the store equals a local index's, a worker killed mid-put loses
nothing, bad documents fail alone, a rerun skips everything, and ``minireranker index --ray``.

One local Ray (2 CPUs) serves the module. Two stores are compared by their keys, their entries' K/V and the
scores of one query over every document, at atol 1e-6 (the same engines on the same inputs).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from minireranker.runtime.documents import Document, expand_document_args
from minireranker.runtime.errors import MiniRerankerError
from minireranker.runtime.ray_index import (
    KILL_AFTER_ENV,
    RAY_INSTALL,
    IndexWorker,
    RayIndexConfig,
    _check_reachable,
    _run,
    document_record,
    import_ray,
    index_on_ray,
)
from minireranker.runtime.reranker import Reranker
from minireranker.tools.args import with_ids

ray = pytest.importorskip("ray", reason="the 'dev' extra installs ray[data] (pyproject.toml)")

QUERY = "a photograph of a rocket"
ATOL = 1e-6


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 CPUs shared by this module's tests, shut down after them."""
    ray.init(num_cpus=2, object_store_memory=150 * 2**20, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def doc_args(tmp_path_factory, images) -> list[str]:
    """12 documents as command-line arguments: 8 PNG files of real photographs and 4 texts."""
    root = tmp_path_factory.mktemp("ray-docs")
    photos = [img for _, img in sorted(images.items())]
    for i in range(8):
        photos[i % len(photos)].rotate(11 * i).resize((40 + 7 * i, 96 - 5 * i)).save(root / f"page-{i:02d}.png")
    return sorted(str(p) for p in root.glob("*.png")) + [f"text:note {i} on {'rockets' if i % 2 else 'cats'}"
                                                           for i in range(4)]


def as_documents(args: list[str]) -> list[Document]:
    """The documents ``minireranker index`` makes of these arguments (each one's id is how it is written)."""
    return with_ids(expand_document_args(args))


@pytest.fixture(scope="module")
def local_cache(tiny_bundle, doc_args, tmp_path_factory) -> Path:
    """The store a local ``Reranker.index`` writes: what every Ray store is compared with."""
    cache = tmp_path_factory.mktemp("local-cache")
    with Reranker(tiny_bundle, cache) as r:
        report = r.index(as_documents(doc_args))
    assert report.indexed == len(doc_args) and not report.failed
    return cache


def assert_same_store(bundle: Path, cache: Path, reference: Path, docs: list[Document]) -> None:
    """Same keys, every entry complete and its K/V equal, and equal scores (atol 1e-6)."""
    with Reranker(bundle, cache) as got, Reranker(bundle, reference) as want:
        assert sorted(got.store.keys()) == sorted(want.store.keys())
        for key in want.store.keys():
            a, b = got.store.get(key), want.store.get(key)
            assert a is not None, f"entry {key} does not read back"
            np.testing.assert_allclose(a.k, b.k, atol=ATOL, rtol=0, err_msg=f"{key}: K differs beyond atol {ATOL}")
            np.testing.assert_allclose(a.v, b.v, atol=ATOL, rtol=0, err_msg=f"{key}: V differs beyond atol {ATOL}")
        assert got.store.stats()["corrupted"] == 0
        assert not list(got.store.namespace.glob(".tmp-*")), "a temp file was left behind"
        scores = [[r.score for r in sorted(x.rerank(QUERY, [d.id for d in docs]).results, key=lambda r: r.index)]
                  for x in (got, want)]
    np.testing.assert_allclose(scores[0], scores[1], atol=ATOL, rtol=0,
                               err_msg=f"Ray and local scores differ beyond atol {ATOL}")


# -- (a) the store equals a local index's; (d) a rerun skips everything ----------------------------
def test_a_ray_index_writes_the_store_a_local_index_writes_and_a_rerun_skips_it(
        ray_cluster, tiny_bundle, doc_args, local_cache, tmp_path):
    docs, cache = as_documents(doc_args), tmp_path / "cache"
    report = index_on_ray(tiny_bundle, cache, docs, RayIndexConfig.tiny(), progress=False)
    assert (report.indexed, report.skipped, report.failed, report.declined) == (len(docs), 0, [], [])
    assert_same_store(tiny_bundle, cache, local_cache, docs)
    again = index_on_ray(tiny_bundle, cache, docs + docs[:2], RayIndexConfig.tiny(), progress=False)
    assert (again.indexed, again.skipped, again.failed) == (0, len(docs) + 2, [])


def test_a_worker_skips_what_was_cached_after_the_driver_looked(tiny_bundle, doc_args, local_cache):
    """The actor's own check (run in-process here): a document cached meanwhile is skipped, not encoded again."""
    import pyarrow as pa

    worker = IndexWorker(str(tiny_bundle), str(local_cache), {})
    rows = worker(pa.Table.from_pylist([document_record(i, d) for i, d in enumerate(as_documents(doc_args))]))
    assert rows.column("status").to_pylist() == ["skipped"] * len(doc_args)
    assert rows.column("index").to_pylist() == list(range(len(doc_args)))


# -- (b) a worker killed mid-put ------------------------------------------------------------------
def test_a_worker_killed_inside_a_put_loses_nothing_and_its_restart_finishes_the_job(
        ray_cluster, tiny_bundle, doc_args, local_cache, tmp_path, monkeypatch):
    """The one worker dies (the test hook: os._exit between the temp file's fsync and its rename) in its 4th
    put; Ray restarts it and retries the batch, which finds the 3 committed entries complete (skipped) and
    recomputes the 4th: the final store is the local one, with no temp file left."""
    docs, cache = as_documents(doc_args), tmp_path / "cache"
    monkeypatch.setenv(KILL_AFTER_ENV, "3")
    report = index_on_ray(tiny_bundle, cache, docs, RayIndexConfig(workers=1, documents_per_batch=4), progress=False)
    assert (report.indexed, report.skipped, report.failed) == (len(docs) - 3, 3, []), report
    assert_same_store(tiny_bundle, cache, local_cache, docs)


def test_a_job_stopped_midway_resumes_on_rerun(ray_cluster, tiny_bundle, doc_args, local_cache, tmp_path):
    """The driver stops reading after 4 rows (as a killed driver would); the rerun skips at least those 4 and
    indexes the rest."""
    docs, cache = as_documents(doc_args), tmp_path / "cache"
    index_on_ray(tiny_bundle, cache, docs[:1], RayIndexConfig.tiny(), progress=False)  # the store exists
    rows = _run([document_record(i, d) for i, d in enumerate(docs)], RayIndexConfig.tiny(), str(tiny_bundle),
                str(cache), {})
    done = [next(rows)["index"] for _ in range(4)]
    rows.close()
    report = index_on_ray(tiny_bundle, cache, docs, RayIndexConfig.tiny(), progress=False)
    assert report.skipped >= len(set(done)) and report.indexed + report.skipped == len(docs), report
    assert_same_store(tiny_bundle, cache, local_cache, docs)


# -- (c) bad documents fail alone -----------------------------------------------------------------
def test_bad_documents_fail_one_by_one_and_the_rest_are_indexed(ray_cluster, tiny_bundle, doc_args, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a PNG at all")
    good = as_documents(doc_args[:3])
    docs = [good[0], Document(image=broken, id="broken"), Document(text="", id="empty"), good[1],
            Document(image=tmp_path / "missing.png", id="missing"), Document(image=tmp_path / "gone.png"), good[2]]
    report = index_on_ray(tiny_bundle, tmp_path / "cache", docs, RayIndexConfig.tiny(), progress=False)
    assert report.indexed == 3 and report.skipped == 0, report
    failed = {f.index: f for f in report.failed}
    assert sorted(failed) == [1, 2, 4, 5], report.failed
    assert failed[1].document == "broken" and "broken.png" in failed[1].error
    assert failed[2].document == "empty" and "no content" in failed[2].error
    assert "missing.png" in failed[4].error and "gone.png" in failed[5].error  # by a worker, and by the driver
    with Reranker(tiny_bundle, tmp_path / "cache") as r:
        assert sorted(r.store.keys()) == sorted(Reranker.key(d) for d in good)


# -- the command line, and without ray ------------------------------------------------------------
def test_cli_index_ray_prints_the_local_summary(ray_cluster, tiny_bundle, doc_args, tmp_path, capsys):
    from minireranker.tools.cli import main

    cache = tmp_path / "cache"
    assert main(["index", str(tiny_bundle), "--cache", str(cache), "--ray", "--workers", "2", "--quiet",
                 *doc_args]) == 0
    assert f"indexed {len(doc_args)}, skipped 0 (already cached), failed 0 in " in capsys.readouterr().out
    assert main(["index", str(tiny_bundle), "--cache", str(cache), "--ray", "--quiet", *doc_args]) == 0
    assert f"indexed 0, skipped {len(doc_args)} (already cached), failed 0 in " in capsys.readouterr().out
    assert main(["index", str(tiny_bundle), "--cache", str(cache), "--workers", "2", *doc_args]) == 2
    assert capsys.readouterr().err.strip() == "error: --workers: options of a Ray job; add --ray"


def test_without_ray_the_error_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MiniRerankerError, match="install the 'ray' extra") as info:
        import_ray()
    assert RAY_INSTALL in str(info.value) and "\n" not in str(info.value)


def test_the_config_refuses_bad_values():
    for bad in ({"workers": 0}, {"documents_per_batch": 0}, {"gpus_per_worker": -1}, {"cpus_per_worker": 0}):
        with pytest.raises(MiniRerankerError):
            RayIndexConfig(**bad)


def test_an_address_nobody_answers_is_refused_at_once():
    """ray.init would retry it without end; the job says in one line what to do."""
    with pytest.raises(MiniRerankerError, match="no Ray cluster answers at 127.0.0.1:1 .*ray start --head"):
        _check_reachable("127.0.0.1:1", timeout_s=5)
    _check_reachable("auto")  # left to Ray
