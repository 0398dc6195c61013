"""The band-attention Triton kernel (engines/band_attention.py) under Triton's CPU interpreter.

The kernel is compared with the float64 numpy reference, the reference with the band graph's own
attention (``export/modeling.py``, ``segment_attention``). Sizes are tiny: the interpreter runs every
program of the grid in numpy, one after another.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

# Before triton is imported (it decides then for its own jit functions) and before the kernel's first call;
# tests/conftest.py sets it before collection already (peft imports triton), this covers running alone.
_INTERPRET_BEFORE = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from minireranker.engines.band_attention import (  # noqa: E402
    BandAttentionInputError, _jitted_kernel, band_attention, band_attention_reference, compile_ptx)
from minireranker.engines.errors import EngineError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ATOL = {torch.float32: 1e-4, torch.float16: 2e-3}
# fp32: the interpreter's dots are float32 numpy matmuls (IEEE dots on a GPU); what differs from the
# float64 reference is float32 rounding over ~60 keys, ~1e-6, so 1e-4 leaves room. fp16: the inputs are
# rounded to fp16 before the reference sees them, so what is left is the kernel's cast of P to fp16 before
# P @ V (relative 2**-11 per weight) and the fp16 output (half an ulp: 2.4e-4 below 0.5, 4.9e-4 below 1);
# outputs are O(1) (averages of unit-normal values), so 2e-3 is a few ulps.


def make_inputs(n: int = 3, hkv: int = 2, group: int = 2, q_len: int = 3, d: int = 16, s_len: int = 5,
                t_len: int = 37, i_len: int = 4, lens: tuple[int, ...] | None = None,
                dtype=torch.float32, seed: int = 0) -> dict[str, "torch.Tensor"]:
    """Band inputs (module docstring shapes); doc lens 0, T, then others, unless given."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0):
        return (torch.randn(shape, generator=gen) * scale).to(dtype)

    if lens is None:
        lens = tuple([0, t_len] + [int(x) for x in torch.randint(0, t_len + 1, (n - 2,), generator=gen)])[:n]
    return {
        "q": randn(n, hkv * group, q_len, d, scale=0.5),
        "system_k": randn(hkv, s_len, d, scale=0.5), "system_v": randn(hkv, s_len, d),
        "doc_k": randn(n, hkv, t_len, d, scale=0.5), "doc_v": randn(n, hkv, t_len, d),
        "doc_lens": torch.tensor(lens, dtype=torch.int64),
        "instruction_k": randn(n, hkv, i_len, d, scale=0.5), "instruction_v": randn(n, hkv, i_len, d),
        "own_k": randn(n, hkv, q_len, d, scale=0.5), "own_v": randn(n, hkv, q_len, d),
    }


def reference(inputs: dict) -> np.ndarray:
    return band_attention_reference(**{name: t.numpy() for name, t in inputs.items()})


@pytest.fixture(scope="module", autouse=True)
def _interpreter_for_this_module_only():
    yield
    if _INTERPRET_BEFORE is None:  # the kernel stays interpreted (cached); later modules see the old env
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _INTERPRET_BEFORE


def test_the_kernel_is_interpreted():
    assert type(_jitted_kernel()).__name__ == "InterpretedFunction", "TRITON_INTERPRET was set too late"


# (G, d) over every pair; Q, S, I and the key tile cycle with the case index so each value meets several
# of the others: Q 17 with 16-key tiles gives an own tile fully masked for 16 rows, G 4 x Q 17 two row tiles.
CASES = [(g, d, (1, 3, 17)[i % 3], (0, 5)[i % 2], (0, 4)[i // 2 % 2], 16 if i % 2 == 0 else None)
         for i, (g, d) in enumerate(itertools.product((1, 2, 4), (16, 32, 64)))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("group, d, q_len, s_len, i_len, block_n", CASES,
                         ids=[f"G{c[0]}-d{c[1]}-Q{c[2]}-S{c[3]}-I{c[4]}-bn{c[5]}" for c in CASES])
def test_kernel_matches_the_reference(group, d, q_len, s_len, i_len, block_n, dtype):
    inputs = make_inputs(group=group, d=d, q_len=q_len, s_len=s_len, i_len=i_len, dtype=dtype)
    out = band_attention(**inputs, block_n=block_n)
    assert out.dtype == dtype and out.shape == inputs["q"].shape
    np.testing.assert_allclose(out.float().numpy(), reference(inputs), rtol=0, atol=ATOL[dtype])


def test_only_the_own_segment():
    """S = I = 0 and every doc empty: causal attention over the own keys; row 0 is own_v's row 0."""
    inputs = make_inputs(n=2, s_len=0, i_len=0, t_len=8, lens=(0, 0), q_len=5)
    out = band_attention(**inputs)
    np.testing.assert_allclose(out.numpy(), reference(inputs), rtol=0, atol=1e-4)
    np.testing.assert_allclose(out[:, :, 0].numpy(), inputs["own_v"].repeat_interleave(2, 1)[:, :, 0].numpy(),
                               rtol=0, atol=1e-6)


def test_strided_views_as_the_band_passes_them():
    """One layer's slices of the band's [N, Lb, Hkv, T, d] inputs, q as [N, Q, Hq, d] transposed, int32
    lens, and an own_v whose head dim is not contiguous (copied)."""
    base = make_inputs(n=3, group=2, q_len=3, d=16, t_len=21)
    n, hkv, t_len, d = base["doc_k"].shape
    layered = {name: torch.randn(n, 3, *base[name].shape[1:]) for name in
               ("doc_k", "doc_v", "instruction_k", "instruction_v")}
    system = {name: torch.randn(3, 1, *base[name].shape) for name in ("system_k", "system_v")}
    q = torch.randn(n, base["q"].shape[2], base["q"].shape[1], d).transpose(1, 2)
    own_v = torch.randn(n, hkv, d, base["q"].shape[2]).transpose(2, 3)
    inputs = {**base, **{k: v[:, 1] for k, v in layered.items()}, **{k: v[2, 0] for k, v in system.items()},
              "q": q, "own_v": own_v, "doc_lens": torch.tensor([0, 21, 9], dtype=torch.int32)}
    assert not inputs["doc_k"].is_contiguous() and not q.is_contiguous() and own_v.stride(-1) != 1
    out = band_attention(**inputs, block_n=16)
    np.testing.assert_allclose(out.numpy(), reference(inputs), rtol=0, atol=1e-4)


def test_doc_lens_out_of_range_are_clamped():
    inputs = make_inputs(n=2, t_len=10, lens=(-3, 15))
    out = band_attention(**inputs)
    clamped = {**inputs, "doc_lens": torch.tensor([0, 10])}
    np.testing.assert_allclose(out.numpy(), reference(clamped), rtol=0, atol=1e-4)


@pytest.mark.parametrize("fused", [False, True], ids=["portable", "fused"])
def test_reference_equals_segment_attention(fused):
    """The band graph's attention over the same four segments, float32, atol 1e-5."""
    from minireranker.export.modeling import segment_attention

    inputs = make_inputs(n=4, hkv=2, group=4, q_len=6, d=32, s_len=5, t_len=11, i_len=3)
    mask = torch.arange(11)[None, :] < inputs["doc_lens"][:, None]  # [N, T]
    segments = [(inputs["system_k"][None], inputs["system_v"][None], None),
                (inputs["doc_k"], inputs["doc_v"], mask[:, None, None, :]),
                (inputs["instruction_k"], inputs["instruction_v"], None),
                (inputs["own_k"], inputs["own_v"], torch.ones(6, 6, dtype=torch.bool).tril())]
    expected = segment_attention(inputs["q"], segments, fused=fused)
    np.testing.assert_allclose(reference(inputs), expected.numpy(), rtol=0, atol=1e-5)


def test_bad_inputs_are_named():
    good = make_inputs()
    cases = [
        ({"q": good["q"][0]}, r"q must be \[N, Hq, Q, d\], got \[4, 3, 16\]"),
        ({"q": torch.zeros(3, 4, 3, 48)}, r"head dim d = 48 is not supported"),
        ({"doc_k": good["doc_k"][:, :1]}, r"doc_k must be \[N=3, Hkv=2, T, d=16\], got \[3, 1, 37, 16\]"),
        ({"own_v": good["own_v"].half()}, r"own_v must be torch.float32 like q"),
        ({"system_v": good["system_v"][:, :2]}, r"system_v must be \[2, 5, 16\] like system_k"),
        ({"doc_lens": good["doc_lens"].float()}, r"doc_lens must be int32 or int64"),
        ({"doc_lens": good["doc_lens"][:2]}, r"doc_lens must be \[N=3\]"),
        ({"own_k": torch.zeros(3, 3, 3, 16), "own_v": torch.zeros(3, 3, 3, 16)}, r"q's 4 heads .* 3 K/V heads"),
        ({"instruction_k": good["instruction_k"].numpy()}, r"instruction_k must be a torch tensor"),
        ({"q": good["q"].double()}, r"q must be float16 or float32"),
    ]
    for change, message in cases:
        with pytest.raises(BandAttentionInputError, match=message):
            band_attention(**{**good, **change})
    with pytest.raises(ValueError, match=r"block_n must be a power of two >= 16, got 24"):
        band_attention(**good, block_n=24)
    assert issubclass(BandAttentionInputError, EngineError)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(triton.knobs.runtime, "interpret", False)
    with pytest.raises(BandAttentionInputError, match=r"runs on a CUDA device"):
        band_attention(**make_inputs())


def test_importing_the_module_imports_neither_torch_nor_triton():
    code = ("import sys, minireranker.engines.band_attention; "
            "print([m for m in ('torch', 'triton') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# Ahead-of-time compilation needs no GPU and no driver: Triton's compiler, LLVM and ptxas are in the wheel.
# It runs in a child process, as this one runs the interpreter. Head dim 16 keeps each compile to seconds.
PTX_TARGETS = [  # (arch, ptx_version, expected .target, expected .version)
    (87, 82, "sm_87", "8.2"),  # Jetson Orin on JetPack 6.0 (CUDA 12.2 driver: PTX ISA 8.2 at most)
    (89, None, "sm_89", "8.8"),
    (90, None, "sm_90a", "9.4"),  # wgmma: this PTX is for Hopper only
]
_COMPILE = r"""
import json, re, sys
from minireranker.engines.band_attention import compile_ptx
found = []
for arch, version in json.loads(sys.argv[1]):
    ptx = compile_ptx(arch, head_dim=16, dtype="fp16", ptx_version=version)
    found.append({"target": re.search(r"^\.target (\w+)", ptx, re.M).group(1),
                  "version": re.search(r"^\.version ([\d.]+)", ptx, re.M).group(1),
                  "entry": ".entry _band_attention_kernel" in ptx, "wgmma": "wgmma" in ptx,
                  "mma_sync": "mma.sync" in ptx})
print(json.dumps(found))
"""


def test_compile_ptx_without_a_gpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile afresh, and not into ~/.triton
    targets = json.dumps([[arch, version] for arch, version, _, _ in PTX_TARGETS])
    result = subprocess.run([sys.executable, "-c", _COMPILE, targets], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for (arch, _, target, version), ptx in zip(PTX_TARGETS, found):
        hopper = arch == 90
        assert ptx == {"target": target, "version": version, "entry": True, "wgmma": hopper, "mma_sync": not hopper}


def test_compile_ptx_refuses_the_interpreter():
    with pytest.raises(RuntimeError, match=r"runs Triton's interpreter"):
        compile_ptx(90, head_dim=16)


def test_compile_ptx_refuses_other_head_dims():
    with pytest.raises(ValueError, match=r"head_dim in .* got 96"):
        compile_ptx(90, head_dim=96)


def test_gpu_check_skips_without_a_gpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"skipped": "no CUDA device"}
