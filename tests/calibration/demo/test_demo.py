"""`minireranker demo`, the README's first command, on the embedded default (the bundled real-data models)."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

from minireranker.calibration.demo.run import ASSETS, default_queries, load_corpus
from minireranker.runtime.spec import RerankSpec


def test_demo_runs_end_to_end_on_the_bundled_models(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minireranker.tools.cli", "demo", "--output", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    text = out.stdout
    queries = default_queries()
    assert text.count("\nquery: ") == len(queries) >= 3
    from minireranker.calibration.demo.data_files import DEMO_QUERIES

    shown = {q.kind for q in DEMO_QUERIES if q.text in queries}  # every kind of query the bundled set holds
    assert shown == {"digit", "ordered", "pair", "count", "photo"}
    assert "(calibrated)" in text and "from the embedder" in text
    assert "stages (ms): " in text and "x faster, same run" in text
    report = json.loads((tmp_path / "d" / "demo.json").read_text())
    # the engines were built for the checkpoint's calibrated spec
    shipped = RerankSpec.from_file(ASSETS / "reranker" / "minireranker.json")
    built = report["spec"]
    assert (built["exit_layer"], built["band"], built["keep_ratio"], built["query_position"], built["guide"]) == (
        shipped.exit_layer, list(shipped.band), shipped.keep_ratio, shipped.query_position, shipped.guide)
    assert report["documents"] == len(load_corpus(ASSETS / "corpus" / "corpus.jsonl"))
    for row in report["queries"]:
        assert len(row["candidates"]) == 20 and sorted(row["ranking"]) == sorted(row["candidates"])
        assert row["scores"] == sorted(row["scores"], reverse=True)
        assert row["dense_s"] > 0 and row["minireranker_s"] > 0
        with Image.open(row["contact_sheet"]) as sheet:
            assert sheet.width > 5 * 140  # five thumbnails in a row
    assert report["speedup"] == report["dense_s_per_query"] / report["minireranker_s_per_query"]


def test_demo_rejects_a_non_positive_candidate_count(tmp_path):
    from cli_helpers import assert_one_error_line, run_cli

    assert_one_error_line(run_cli("demo", "--output", str(tmp_path / "d"), "--candidates", "0"), "--candidates")
