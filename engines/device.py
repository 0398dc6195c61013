"""Which GPU this is, without torch or CUDA Python: the CUDA driver API (``libcuda``) through ctypes.

``engines.json`` records the device a plan was built on (name and compute capability): a TensorRT plan runs
only on the GPU model it was built for. The driver library ships with every NVIDIA driver, a Jetson's
included (L4T), so this needs no toolkit. Unverified on hardware (docs/engines.md); where no driver is
present :func:`cuda_device` returns None.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# CUdevice_attribute values from cuda.h (stable since CUDA 2.x)
_COMPUTE_CAPABILITY_MAJOR = 75
_COMPUTE_CAPABILITY_MINOR = 76
_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


def _driver() -> ctypes.CDLL | None:
    names = list(_LIBRARIES)
    found = ctypes.util.find_library("cuda")
    if found:
        names.append(found)
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def cuda_device(index: int = 0) -> dict | None:
    """``{"name": "NVIDIA H200", "compute_capability": "9.0", "index": 0}``, or None without a driver/GPU."""
    lib = _driver()
    if lib is None or lib.cuInit(0) != 0:
        return None
    device = ctypes.c_int()
    if lib.cuDeviceGet(ctypes.byref(device), index) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(), ctypes.c_int()
    if lib.cuDeviceGetName(name, 256, device) != 0 \
            or lib.cuDeviceGetAttribute(ctypes.byref(major), _COMPUTE_CAPABILITY_MAJOR, device) != 0 \
            or lib.cuDeviceGetAttribute(ctypes.byref(minor), _COMPUTE_CAPABILITY_MINOR, device) != 0:
        return None
    return {"name": name.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}",
            "index": index}
