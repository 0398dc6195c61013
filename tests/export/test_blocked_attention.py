"""The vision tower's attention in blocks of query rows (export/modeling.py ``blocked_attention``): the same
result as one call, for any row count (blocks may be empty), and through an ONNX export whose row count is
dynamic; with a window mask it is one call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minireranker.export.modeling import attention, blocked_attention

ATOL = 1e-6  # float32: each row's softmax is the same computation; only the matrix products are split


@pytest.mark.parametrize("t", [1, 5, 8, 37])
@pytest.mark.parametrize("masked", [False, True])
def test_blocks_equal_one_call(t, masked):
    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(1, 4, t, 16, generator=g) for _ in range(3))
    visible = (torch.rand(1, 1, t, t, generator=g) > 0.3) | torch.eye(t, dtype=torch.bool) if masked else None
    got = blocked_attention(q, k, v, visible, False, blocks=8)
    want = attention(q, k, v, visible, False)
    if masked:  # one call: the very same computation
        assert torch.equal(got, want)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_the_export_keeps_the_row_count_dynamic(tmp_path):
    ort = pytest.importorskip("onnxruntime")

    class Tower(torch.nn.Module):
        def forward(self, x):  # x: [T, 16] -> one head attending over the T rows
            q = x[None, None]
            return blocked_attention(q, q, q, None, False, blocks=4)[0, 0]

    path = tmp_path / "blocked.onnx"
    torch.onnx.export(Tower(), (torch.randn(12, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "t"}, "y": {0: "t"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for t in (3, 12, 29):  # fewer rows than blocks, the traced count, another count
        x = np.random.default_rng(t).standard_normal((t, 16)).astype(np.float32)
        ref = attention(*(torch.from_numpy(x)[None, None],) * 3, None, False)[0, 0].numpy()
        np.testing.assert_allclose(session.run(None, {"x": x})[0], ref, atol=ATOL, rtol=0)
