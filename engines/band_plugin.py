"""The band attention as a TensorRT Python plugin with an ahead-of-time implementation (TensorRT >= 10.9).

A bundle built with ``attention="plugin"`` holds one ``minireranker.BandAttention`` node per band layer
(export/plugin_attention.py); TensorRT's ONNX parser builds it from the plugin registered under that name
by :func:`register_band_plugin`, which must run in the process before the parser does. Its AOT
implementation hands TensorRT the Triton kernel of :mod:`.band_attention` as PTX, its launch grid and its
scalar arguments, so the engine runs the kernel with no Python in the loop.

============  ==========================================================================================
inputs        q [N, Hq, Q, d], system_k/v [Hkv, S, d], doc_k/v [N, Hkv, T, d], doc_lens int32 [N],
              instruction_k/v [N, Hkv, I, d], own_k/v [N, Hkv, Q, d]: fp16 or fp32 (all alike), linear
attributes    scale (float, 1/sqrt(d)), num_kv_heads (int, Hkv): read at build time only
output        [N, Hq, Q, d], q's dtype
kernel        inputs, then the int32 scalars of :func:`plugin_launch` (strides in elements, sizes), then
              the output: TensorRT's AOT argument order, which ``band_attention.compile_ptx``'s kernel
              (output second, a float scale) does not have, so :func:`compile_plugin_kernel` compiles a
              wrapper that calls the same kernel body with the scale as a constant (extra arguments are
              int32 only)
launch        grid (N * Hkv, ceil(G * Q / 64)), 4 warps; 64 query rows a tile since Q is dynamic
============  ==========================================================================================

Unverified on hardware: no GPU with TensorRT >= 10.9 has run it. The tests check what needs neither
(tests/export/test_plugin_attention.py): the launch arithmetic and the PTX (kernel name, parameter count).
Triton 3.9 appends two pointer parameters of its own (global and profile scratch) to every kernel it
compiles, which TensorRT's launch does not pass; the kernel reads neither (it allocates no scratch), but
whether the driver accepts the shorter argument list is a first thing to check on a GPU.

Importing this module imports neither tensorrt nor triton: :func:`register_band_plugin` and
:func:`compile_plugin_kernel` import them when called.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

from . import band_attention as _band
from .errors import EngineError

tl: Any = None  # triton.language, bound by compile_plugin_kernel (the kernel's annotations name it)
_inner_kernel: Any = None  # band_attention's kernel body as a triton JITFunction, bound likewise

PLUGIN_ID = "minireranker::BandAttention"
MIN_TENSORRT = (10, 9)
BLOCK_M = 64  # query rows per tile: Q is dynamic when the engine is built, so the kernel's largest tile
NUM_WARPS = 4
NUM_SCALARS = 34  # 28 strides and 6 sizes, between the inputs and the output


@dataclass(frozen=True)
class PluginLaunch:
    """What the AOT implementation returns besides the kernel: grid, threads per block, int32 scalars."""

    grid: tuple[Any, Any]
    block_threads: int
    scalars: tuple[Any, ...]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _mul(a: Any, b: Any) -> Any:
    """a * b with a symbolic operand, when there is one, on the left (TensorRT's expressions times ints)."""
    return b * a if isinstance(a, int) else a * b


def plugin_launch(q_shape: tuple, system_shape: tuple, doc_shape: tuple, instruction_shape: tuple,
                  num_kv_heads: int, cdiv: Callable[[Any, int], Any] = _cdiv) -> PluginLaunch:
    """Grid and kernel scalars for contiguous inputs of these shapes (module docstring).

    Sizes are ints, or TensorRT's symbolic expressions for the dynamic ones (N, Q, S, T, I) with ``cdiv``
    ``tensorrt.plugin.cdiv``: only ``+``, ``*`` and ``cdiv`` are applied to them. Hq, Hkv and d are ints.
    """
    n, hq, q_len, d = q_shape
    s_len, t_len, i_len = system_shape[1], doc_shape[2], instruction_shape[2]
    hkv, group = num_kv_heads, hq // num_kv_heads

    def strides(*sizes):  # a contiguous [first, *sizes, d]: the strides of every axis but the last (1)
        out, step = [d], d
        for size in reversed(sizes):
            step = _mul(size, step)
            out.insert(0, step)
        return out

    q_strides = strides(hq, q_len)            # n, h, t (and out's: the same shape)
    system = strides(s_len)                   # h, t
    doc, instruction, own = strides(hkv, t_len), strides(hkv, i_len), strides(hkv, q_len)
    scalars = (*q_strides, *q_strides, *system, *system, *doc, *doc, *instruction, *instruction, *own, *own,
               hkv, group, q_len, s_len, t_len, i_len)
    assert len(scalars) == NUM_SCALARS
    return PluginLaunch((_mul(n, hkv), cdiv(_mul(q_len, group), BLOCK_M)), NUM_WARPS * 32, scalars)


def _band_plugin_kernel(
        q, sys_k, sys_v, doc_k, doc_v, doc_lens, ins_k, ins_v, own_k, own_v,
        sq_n, sq_h, sq_t, so_n, so_h, so_t, ssk_h, ssk_t, ssv_h, ssv_t,
        sdk_n, sdk_h, sdk_t, sdv_n, sdv_h, sdv_t, sik_n, sik_h, sik_t, siv_n, siv_h, siv_t,
        sok_n, sok_h, sok_t, sov_n, sov_h, sov_t,
        num_kv_heads, group, query_len, system_len, doc_capacity, instruction_len, out,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
        QK_SCALE: tl.constexpr):
    # TensorRT's order (inputs, scalars, output) around band_attention's kernel body, inlined
    _inner_kernel(q, out, sys_k, sys_v, doc_k, doc_v, doc_lens, ins_k, ins_v, own_k, own_v,
                  sq_n, sq_h, sq_t, so_n, so_h, so_t, ssk_h, ssk_t, ssv_h, ssv_t,
                  sdk_n, sdk_h, sdk_t, sdv_n, sdv_h, sdv_t, sik_n, sik_h, sik_t, siv_n, siv_h, siv_t,
                  sok_n, sok_h, sok_t, sov_n, sov_h, sov_t,
                  num_kv_heads, group, query_len, system_len, doc_capacity, instruction_len, QK_SCALE,
                  HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION)


@dataclass(frozen=True)
class PluginKernel:
    """The compiled wrapper: its PTX entry name, the PTX, and the shared memory a block needs (bytes)."""

    name: str
    ptx: str
    shared_bytes: int


@functools.cache
def compile_plugin_kernel(arch: int, head_dim: int, dtype: str, ptx_version: int | None = None) -> PluginKernel:
    """The plugin's kernel for CUDA ``sm_<arch>``, ``head_dim`` and ``dtype`` ("fp16"/"fp32") as PTX; needs no GPU.

    Raises ValueError for an unsupported head dim or dtype, RuntimeError under Triton's interpreter (as
    ``band_attention.compile_ptx``).
    """
    global tl, _inner_kernel
    if head_dim not in _band.HEAD_DIMS or dtype not in _band.DTYPES:
        raise ValueError(f"the band plugin takes head_dim in {_band.HEAD_DIMS} and dtype in {_band.DTYPES}, "
                         f"got {head_dim}, {dtype!r}")
    triton = _band._triton()
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    if triton.knobs.runtime.interpret or not isinstance(_band.tl.sum, JITFunction):
        raise RuntimeError("compile_plugin_kernel cannot compile in a process that runs Triton's interpreter "
                           "(TRITON_INTERPRET=1 now or when triton was imported): call it in another process")
    tl, _inner_kernel = _band.tl, JITFunction(_band._band_attention_kernel)
    kernel = JITFunction(_band_plugin_kernel)
    _, block_n = _band._blocks(1, BLOCK_M, head_dim, 2 if dtype == "fp16" else 4)
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": BLOCK_M, "BLOCK_N": block_n, "DOT_PRECISION": _band._dot_precision(dtype == "fp32"),
                  "QK_SCALE": math.log2(math.e) / math.sqrt(head_dim)}
    pointers = kernel.arg_names[:10] + ["out"]
    signature = {name: "constexpr" if name in constexprs else
                 ("*i32" if name == "doc_lens" else f"*{dtype}") if name in pointers else "i32"
                 for name in kernel.arg_names}
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in pointers}
    source = triton.compiler.ASTSource(kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": NUM_WARPS, "num_stages": _band._NUM_STAGES,
                                       "enable_fp_fusion": _band._FP_FUSION, "ptx_version": ptx_version})
    return PluginKernel(compiled.metadata.name, compiled.asm["ptx"], int(compiled.metadata.shared))


def _tensorrt() -> Any:
    """``tensorrt``, checked to be >= 10.9 (the first with ``tensorrt.plugin.aot_impl``), or one EngineError line."""
    try:
        import tensorrt
    except ImportError:
        raise EngineError("the band plugin needs TensorRT >= 10.9 (its tensorrt.plugin AOT API): pip install "
                          "\"tensorrt>=10.9\", or build the bundle with another --attention") from None
    version = tuple(int(p) for p in tensorrt.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_TENSORRT:
        raise EngineError(f"the band plugin needs TensorRT >= 10.9 (its tensorrt.plugin AOT API), found "
                          f"{tensorrt.__version__}; upgrade TensorRT, or build the bundle with another --attention")
    return tensorrt


def _static(expr: Any, what: str) -> int:
    """A dimension TensorRT knows at build time (heads, head dim) as an int."""
    if isinstance(expr, int):
        return expr
    if not expr.is_constant:
        raise EngineError(f"the band plugin needs a fixed {what}; the graph leaves it dynamic")
    return int(expr.constant_value)


@functools.cache
def register_band_plugin() -> None:
    """Register ``minireranker::BandAttention`` with TensorRT (once per process; unverified on hardware)."""
    trt = _tensorrt()
    import tensorrt.plugin as trtp

    from .device import cuda_device

    @trtp.register(PLUGIN_ID)
    def describe(q: trtp.TensorDesc, system_k: trtp.TensorDesc, system_v: trtp.TensorDesc, doc_k: trtp.TensorDesc,
                 doc_v: trtp.TensorDesc, doc_lens: trtp.TensorDesc, instruction_k: trtp.TensorDesc,
                 instruction_v: trtp.TensorDesc, own_k: trtp.TensorDesc, own_v: trtp.TensorDesc, scale: float,
                 num_kv_heads: int) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(PLUGIN_ID)
    def formats(q, system_k, system_v, doc_k, doc_v, doc_lens, instruction_k, instruction_v, own_k, own_v,
                outputs) -> list:
        floats = "FP32|FP16"
        return [trtp.AutoTuneCombination(", ".join([floats] * 5 + ["INT32"] + [floats] * 5))]

    @trtp.aot_impl(PLUGIN_ID)
    def aot(q, system_k, system_v, doc_k, doc_v, doc_lens, instruction_k, instruction_v, own_k, own_v,
            num_kv_heads: int, outputs, tactic):
        dims = q.shape_expr
        hq, d = _static(dims[1], "query head count"), _static(dims[3], "head dim")
        device = cuda_device()
        if device is None:
            raise EngineError("building the band plugin needs a CUDA device (its PTX targets the GPU's architecture)")
        arch = int(device["compute_capability"].replace(".", ""))
        kernel = compile_plugin_kernel(arch, d, "fp16" if q.dtype == trt.float16 else "fp32")
        launch = plugin_launch((dims[0], hq, dims[2], d), tuple(system_k.shape_expr), tuple(doc_k.shape_expr),
                               tuple(instruction_k.shape_expr), num_kv_heads, trtp.cdiv)
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y = launch.grid
        params.block_x = launch.block_threads
        params.shared_mem = kernel.shared_bytes
        scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in launch.scalars])
        return kernel.name.encode(), kernel.ptx.encode(), params, scalars
