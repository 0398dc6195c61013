"""The band's attention as one Triton kernel: N candidates' queries over four key segments, in one launch.

The band graph (``export/graphs.py``, ``BandGraph``) attends each candidate's query rows over the keys of
four segments, as if they were concatenated (``export/modeling.py``, ``segment_attention``)::

    keys of candidate n:  | system (S)  | document (T, padded)       | instruction (I) | own (Q)  |
                          | shared by   | keys < doc_lens[n] visible | all visible     | causal:  |
                          | every n     | the rest padding           |                 | i sees   |
                          |             |                            |                 | 0..i     |
    query row i of n  ──▶ one softmax over every visible key of the four, scale 1/sqrt(d)

Shapes: q [N, Hq, Q, d]; system_k/v [Hkv, S, d]; doc_k/v [N, Hkv, T, d]; doc_lens int [N];
instruction_k/v [N, Hkv, I, d]; own_k/v [N, Hkv, Q, d] -> out [N, Hq, Q, d] (q's dtype). Query head h
reads K/V head h // G, G = Hq / Hkv. S and I may be 0.

Grid: (N * Hkv, ceil(G * Q / BLOCK_M)). A program takes candidate n, K/V head j and BLOCK_M rows of the
packed [G * Q] query rows of the G heads that read head j (row r: head j*G + r // Q, position r % Q), and
streams the four segments in turn in BLOCK_N-key tiles with an online softmax (running max and
normaliser, float32, flash-attention style), each segment read from its own tensor through its own
strides. So nothing is concatenated, padded K/V beyond doc_lens[n] are never read, and no K/V head is
repeated for the G query heads: they are rows of one tile that meets each K/V tile once. Scores,
softmax and the accumulator are float32; fp16 inputs feed fp16 tensor-core dots (P is cast to fp16
before P @ V, as flash attention does), fp32 inputs IEEE fp32 dots (no TF32). doc_lens is clamped to
[0, T] in the kernel: a bad length never reads outside the tensor.

Tests (tests/engines/test_band_kernel.py, Triton's CPU interpreter): against the float64 reference, atol
1e-4 at fp32 and 2e-3 at fp16 (outputs of O(1): fp16 rounding of the inputs, of P and of the output);
the reference against ``segment_attention`` at fp32, atol 1e-5.

Neither torch nor triton is imported with this module (the runtime is torch-free): :func:`band_attention`
and :func:`compile_ptx` import them when called, and bind ``tl`` for the kernel's source.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .errors import EngineError

tl: Any = None  # triton.language, bound by _triton() on first use so that importing this module costs nothing

HEAD_DIMS = (16, 32, 64, 128)  # powers of two; 16 is tl.dot's smallest; 256 would spill the accumulator
DTYPES = ("fp16", "fp32")
_NUM_WARPS = 4
_NUM_STAGES = 2
_FP_FUSION = True  # fused multiply-adds; explicit because triton 3.9 warns when unset (its default flips in 3.10)


class BandAttentionInputError(EngineError, ValueError):
    """An input of :func:`band_attention` has the wrong shape, dtype or device."""


def band_attention_reference(q: np.ndarray, system_k: np.ndarray, system_v: np.ndarray, doc_k: np.ndarray,
                             doc_v: np.ndarray, doc_lens: np.ndarray, instruction_k: np.ndarray,
                             instruction_v: np.ndarray, own_k: np.ndarray, own_v: np.ndarray) -> np.ndarray:
    """The band attention in float64 numpy (shapes in the module docstring) -> [N, Hq, Q, d] float64.

    Written for clarity: it concatenates each candidate's visible keys and repeats K/V per query head.
    """
    q = np.asarray(q, dtype=np.float64)
    n, hq, q_len, d = q.shape
    g = hq // np.shape(own_k)[1]
    causal = np.tril(np.ones((q_len, q_len), dtype=bool))
    out = np.empty_like(q)
    for c in range(n):
        visible = min(max(int(doc_lens[c]), 0), np.shape(doc_k)[2])  # clamped, as the kernel does
        k = np.concatenate([system_k, doc_k[c, :, :visible], instruction_k[c], own_k[c]], axis=1)
        v = np.concatenate([system_v, doc_v[c, :, :visible], instruction_v[c], own_v[c]], axis=1)
        k = np.repeat(np.asarray(k, dtype=np.float64), g, axis=0)  # [Hq, P, d]
        v = np.repeat(np.asarray(v, dtype=np.float64), g, axis=0)
        mask = np.ones((q_len, k.shape[1]), dtype=bool)
        mask[:, k.shape[1] - q_len:] = causal  # the own segment comes last
        scores = np.where(mask, q[c] @ k.transpose(0, 2, 1) / math.sqrt(d), -np.inf)  # [Hq, Q, P]
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        out[c] = (weights / weights.sum(-1, keepdims=True)) @ v
    return out


def _band_attention_kernel(
        q, out, sys_k, sys_v, doc_k, doc_v, doc_lens, ins_k, ins_v, own_k, own_v,
        sq_n, sq_h, sq_t, so_n, so_h, so_t,
        ssk_h, ssk_t, ssv_h, ssv_t,
        sdk_n, sdk_h, sdk_t, sdv_n, sdv_h, sdv_t,
        sik_n, sik_h, sik_t, siv_n, siv_h, siv_t,
        sok_n, sok_h, sok_t, sov_n, sov_h, sov_t,
        num_kv_heads, group, query_len, system_len, doc_capacity, instruction_len, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # The Triton kernel (triton.jit by _jitted_kernel): strides are in elements, the head dim's is 1;
    # qk_scale = log2(e) / sqrt(d), so the softmax runs on exp2.
    pid = tl.program_id(0)
    n = (pid // num_kv_heads).to(tl.int64)  # int64: offsets of a 100-candidate, 4-layer K/V pass 2**31
    j = (pid % num_kv_heads).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # packed (head of the group, query row)
    row_ok = rows < group * query_len
    head = j * group + rows // query_len
    pos = rows % query_len
    dims = tl.arange(0, HEAD_DIM)
    x = tl.load(q + n * sq_n + head[:, None] * sq_h + pos[:, None] * sq_t + dims[None, :],
                mask=row_ok[:, None], other=0.0)  # [BLOCK_M, HEAD_DIM]
    doc_len = tl.minimum(tl.maximum(tl.load(doc_lens + n), 0), doc_capacity).to(tl.int32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: a fully masked tile gives 0, never NaN
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for segment in tl.static_range(4):  # unrolled: each segment reads its own tensor
        if segment == 0:
            k_base, v_base = sys_k + j * ssk_h, sys_v + j * ssv_h
            k_step, v_step, length = ssk_t, ssv_t, system_len
        elif segment == 1:
            k_base, v_base = doc_k + n * sdk_n + j * sdk_h, doc_v + n * sdv_n + j * sdv_h
            k_step, v_step, length = sdk_t, sdv_t, doc_len
        elif segment == 2:
            k_base, v_base = ins_k + n * sik_n + j * sik_h, ins_v + n * siv_n + j * siv_h
            k_step, v_step, length = sik_t, siv_t, instruction_len
        else:
            k_base, v_base = own_k + n * sok_n + j * sok_h, own_v + n * sov_n + j * sov_h
            k_step, v_step, length = sok_t, sov_t, query_len
        for start in range(0, length, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            key_ok = keys < length
            kt = tl.load(k_base + keys[None, :] * k_step + dims[:, None], mask=key_ok[None, :], other=0.0)
            s = tl.dot(x, kt, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N] float32
            visible = key_ok[None, :]
            if segment == 3:
                visible = visible & (keys[None, :] <= pos[:, None])  # own keys: causal
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + keys[:, None] * v_step + dims[None, :], mask=key_ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new
    acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # every real row sees its own key 0: l_i > 0
    tl.store(out + n * so_n + head[:, None] * so_h + pos[:, None] * so_t + dims[None, :],
             acc.to(out.dtype.element_ty), mask=row_ok[:, None])


@functools.cache
def _triton() -> Any:
    """The triton module, with ``tl`` bound for the kernel's source (its annotations and body)."""
    global tl
    import triton
    import triton.language

    tl = triton.language
    return triton


@functools.cache
def _jitted_kernel() -> Any:
    """``_band_attention_kernel`` under ``triton.jit`` (the CPU interpreter when TRITON_INTERPRET=1 at the
    first call)."""
    return _triton().jit(_band_attention_kernel)


def _blocks(group: int, query_len: int, head_dim: int, element_size: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): all G*Q packed rows in one tile up to 64; 64-key tiles, 32 for rows over 256 bytes
    (fp32 at d=128: two stages of K and V tiles stay within Orin's shared memory)."""
    rows = group * query_len
    block_m = min(64, max(16, 1 << (rows - 1).bit_length()))
    return block_m, 64 if head_dim * element_size <= 256 else 32


def _dot_precision(fp32: bool) -> str:
    """tl.dot's input_precision: IEEE for fp32 (TF32 would cost ~1e-3); fp16 dots ignore it (tf32: the default)."""
    return "ieee" if fp32 else "tf32"


def _check(name: str, t: Any, shape: tuple[int | None, ...], expected: str, dtype: Any, device: Any) -> None:
    """Raise unless ``t`` is a tensor of ``shape`` (None: any size), ``dtype`` and ``device``."""
    import torch

    if not isinstance(t, torch.Tensor):
        raise BandAttentionInputError(f"{name} must be a torch tensor {expected}, got {type(t).__name__}")
    if t.dim() != len(shape) or any(s is not None and s != got for s, got in zip(shape, t.shape)):
        raise BandAttentionInputError(f"{name} must be {expected}, got {list(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise BandAttentionInputError(f"{name} must be {dtype} like q, got {t.dtype}")
    if t.device != device:
        raise BandAttentionInputError(f"{name} is on {t.device}, q on {device}: put every input on one device")


def _check_inputs(q: Any, system_k: Any, system_v: Any, doc_k: Any, doc_v: Any, doc_lens: Any,
                  instruction_k: Any, instruction_v: Any, own_k: Any, own_v: Any) -> tuple[int, ...]:
    """Check every input against q's sizes; returns (N, Hq, Q, d, Hkv, S, T, I)."""
    import torch

    _check("q", q, (None,) * 4, "[N, Hq, Q, d]", None, getattr(q, "device", None))
    n, hq, q_len, d = q.shape
    if q.dtype not in (torch.float16, torch.float32):
        raise BandAttentionInputError(f"q must be float16 or float32, got {q.dtype}")
    if d not in HEAD_DIMS:
        raise BandAttentionInputError(f"head dim d = {d} is not supported: use one of {HEAD_DIMS}")
    if n == 0 or q_len == 0:
        raise BandAttentionInputError(f"q [N, Hq, Q, d] needs N >= 1 and Q >= 1, got {list(q.shape)}")
    _check("own_k", own_k, (n, None, q_len, d), f"[N={n}, Hkv, Q={q_len}, d={d}]", q.dtype, q.device)
    hkv = own_k.shape[1]
    if hkv == 0 or hq % hkv:
        raise BandAttentionInputError(f"q's {hq} heads are not a multiple of own_k's {hkv} K/V heads")
    _check("system_k", system_k, (hkv, None, d), f"[Hkv={hkv}, S, d={d}]", q.dtype, q.device)
    _check("doc_k", doc_k, (n, hkv, None, d), f"[N={n}, Hkv={hkv}, T, d={d}]", q.dtype, q.device)
    _check("instruction_k", instruction_k, (n, hkv, None, d), f"[N={n}, Hkv={hkv}, I, d={d}]", q.dtype, q.device)
    for name, v, k in (("own_v", own_v, own_k), ("system_v", system_v, system_k), ("doc_v", doc_v, doc_k),
                       ("instruction_v", instruction_v, instruction_k)):
        _check(name, v, tuple(k.shape), f"{list(k.shape)} like {name[:-1]}k", q.dtype, q.device)
    _check("doc_lens", doc_lens, (n,), f"[N={n}]", None, q.device)
    if doc_lens.dtype not in (torch.int32, torch.int64):
        raise BandAttentionInputError(f"doc_lens must be int32 or int64, got {doc_lens.dtype}")
    return n, hq, q_len, d, hkv, system_k.shape[1], doc_k.shape[2], instruction_k.shape[2]


def band_attention(q: Any, system_k: Any, system_v: Any, doc_k: Any, doc_v: Any, doc_lens: Any,
                   instruction_k: Any, instruction_v: Any, own_k: Any, own_v: Any, *,
                   block_m: int | None = None, block_n: int | None = None) -> Any:
    """The band attention of torch tensors (shapes in the module docstring) in one kernel launch.

    Inputs are fp16 or fp32 (all alike), on one CUDA device, or on the CPU under TRITON_INTERPRET=1. Any
    strides (e.g. one layer's slice ``doc_k[:, layer]`` of the band's [N, Lb, Hkv, T, d]); a tensor whose
    last dim is not contiguous is copied. ``block_m``/``block_n`` override the tile sizes (powers of two,
    >= 16). Raises :class:`BandAttentionInputError` (a ValueError) naming a bad input.
    """
    import torch

    n, hq, q_len, d, hkv, s_len, t_len, i_len = _check_inputs(
        q, system_k, system_v, doc_k, doc_v, doc_lens, instruction_k, instruction_v, own_k, own_v)
    triton = _triton()
    if q.device.type != "cuda" and not triton.knobs.runtime.interpret:
        raise BandAttentionInputError(f"q is on {q.device}: band_attention runs on a CUDA device "
                                      "(or on the CPU under TRITON_INTERPRET=1)")
    default_m, default_n = _blocks(hq // hkv, q_len, d, q.element_size())
    block_m, block_n = block_m or default_m, block_n or default_n
    for name, size in (("block_m", block_m), ("block_n", block_n)):
        if size < 16 or size & (size - 1):
            raise BandAttentionInputError(f"{name} must be a power of two >= 16, got {size}")
    q, system_k, system_v, doc_k, doc_v, instruction_k, instruction_v, own_k, own_v = (
        t if t.stride(-1) == 1 else t.contiguous()
        for t in (q, system_k, system_v, doc_k, doc_v, instruction_k, instruction_v, own_k, own_v))
    out = torch.empty((n, hq, q_len, d), dtype=q.dtype, device=q.device)
    grid = (n * hkv, triton.cdiv(hq // hkv * q_len, block_m))
    _jitted_kernel()[grid](
        q, out, system_k, system_v, doc_k, doc_v, doc_lens, instruction_k, instruction_v, own_k, own_v,
        *q.stride()[:3], *out.stride()[:3], *system_k.stride()[:2], *system_v.stride()[:2],
        *doc_k.stride()[:3], *doc_v.stride()[:3], *instruction_k.stride()[:3], *instruction_v.stride()[:3],
        *own_k.stride()[:3], *own_v.stride()[:3],
        hkv, hq // hkv, q_len, s_len, t_len, i_len, math.log2(math.e) / math.sqrt(d),
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, DOT_PRECISION=_dot_precision(q.dtype == torch.float32),
        num_warps=_NUM_WARPS, num_stages=_NUM_STAGES, enable_fp_fusion=_FP_FUSION)
    return out


def compile_ptx(arch: int, head_dim: int = 128, dtype: str = "fp16", ptx_version: int | None = None) -> str:
    """The kernel compiled ahead of time to PTX for CUDA ``sm_<arch>`` (87 Jetson Orin, 89, 90); needs no GPU.

    Triton's own ptxas also assembles it (so the PTX is checked). Compiled for BLOCK_M 64 (e.g. 2 heads x 24
    query rows), int32 doc_lens and 16-byte aligned pointers. ``ptx_version``: the PTX ISA to declare, for an
    older driver (82: JetPack 6.0's CUDA 12.2, 85: JetPack 6.1/6.2's CUDA 12.6); None: the newest the bundled
    ptxas takes (triton 3.9: 8.8, and 9.4 for sm_90, whose PTX targets sm_90a). Raises ValueError for an
    unsupported head dim or dtype, RuntimeError in a process that runs Triton's interpreter.
    """
    if head_dim not in HEAD_DIMS or dtype not in DTYPES:
        raise ValueError(f"compile_ptx takes head_dim in {HEAD_DIMS} and dtype in {DTYPES}, "
                         f"got {head_dim}, {dtype!r}")
    triton = _triton()
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    # Under TRITON_INTERPRET=1 triton.language's own jit functions (tl.sum, tl.max) are interpreted ones
    # from its import on, and the compiler cannot use them.
    if triton.knobs.runtime.interpret or not isinstance(tl.sum, JITFunction):
        raise RuntimeError("compile_ptx cannot compile in a process that runs Triton's interpreter "
                           "(TRITON_INTERPRET=1 now or when triton was imported): call it in another process")
    kernel = JITFunction(_band_attention_kernel)
    pointers = ("q", "out", "sys_k", "sys_v", "doc_k", "doc_v", "doc_lens", "ins_k", "ins_v", "own_k", "own_v")
    block_m, block_n = _blocks(2, 24, head_dim, 2 if dtype == "fp16" else 4)
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": block_m, "BLOCK_N": block_n,
                  "DOT_PRECISION": _dot_precision(dtype == "fp32")}
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*i32" if name == "doc_lens" else f"*{dtype}"
        else:
            signature[name] = "fp32" if name == "qk_scale" else "i32"
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in pointers}
    source = triton.compiler.ASTSource(kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": _NUM_WARPS, "num_stages": _NUM_STAGES,
                                       "enable_fp_fusion": _FP_FUSION, "ptx_version": ptx_version})
    return compiled.asm["ptx"]
