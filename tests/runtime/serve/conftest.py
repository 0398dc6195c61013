"""Fixtures of the server tests: one in-process server on 127.0.0.1 (a free port) over the tiny bundle."""

from __future__ import annotations

import pytest
from serve_helpers import QUERY, TEXTS, cli_scores, start_server, wait_ready


@pytest.fixture(scope="session")
def live(tiny_bundle, tmp_path_factory):
    """The shared server (API key ``API_KEY``, ServeLimits.tiny() but 2 MiB bodies), ready."""
    from minireranker.runtime.serve.api import ServeLimits
    from minireranker.runtime.serve.server import shut_down

    live = start_server(tiny_bundle, tmp_path_factory.mktemp("serve-cache"), batch_window_ms=2.0, max_batch=16,
                        limits=ServeLimits.tiny(max_body_bytes=2 << 20))
    wait_ready(live)
    yield live
    shut_down(live.server)


@pytest.fixture(scope="session")
def text_expected(tiny_bundle, tmp_path_factory) -> list[dict]:
    """The CLI's answer for QUERY over TEXTS, the reference every client is compared with."""
    return cli_scores(tiny_bundle, tmp_path_factory.mktemp("cli-cache"), QUERY, [f"text:{t}" for t in TEXTS])
