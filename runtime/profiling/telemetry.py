"""Hardware telemetry sampled while the profiler runs: ``tegrastats`` on a Jetson, NVML on a desktop GPU.

Each source is optional and found lazily: :func:`open_samplers` returns only those present here (none on
a machine with neither, which is not an error). A sampler is a context manager that collects timestamped
samples ``(time.perf_counter(), {metric: value})`` on a background thread (NVML) or from a subprocess's
output (tegrastats); :func:`summarize` reduces them to ``{metric: {"mean", "max", "min", "n"}}``.

Metric names (units in the name; a metric appears only where the source reports it)::

    tegrastats   ram_used_mb ram_total_mb swap_used_mb swap_total_mb
                 cpu_load_pct (mean over online cores) cpu_max_core_load_pct cpu_freq_mhz cpu_online_cores
                 gpu_load_pct gpu_freq_mhz (GR3D_FREQ)   emc_load_pct emc_freq_mhz (memory controller)
                 temp_<sensor>_c                          power_<rail>_mw, power_<rail>_avg_mw
    nvml         gpu_load_pct mem_load_pct mem_used_mb mem_total_mb gpu_freq_mhz mem_freq_mhz power_mw temp_gpu_c

``tegrastats`` line formats differ between JetPack releases and modules; the parser reads each field on
its own, so a field it does not know is skipped, never an error. Handled forms (recorded samples of each
are in ``tests/runtime/profiling/data/``)::

    GR3D_FREQ 0%@[305,305]      JetPack 6 (Orin: load, then one frequency per GPC)
    GR3D_FREQ 0%@1377           JetPack 4/5 (Xavier, early Orin)
    GR3D_FREQ 45%               load only (newer releases, e.g. Thor)
    VDD_IN 5139mW/5139mW        rail: current/average in mW (JetPack 5/6/7)
    POM_5V_GPU 0/0              rail without unit (JetPack 4), taken as mW
    CPU [2%@729,off,...]        per-core load@MHz; 'off' cores are not counted
    cpu@43.75C  tj@44C          temperatures
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

Sample = tuple[float, dict[str, float]]

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_LOAD_FREQ = r"(\d+)%(?:@\[?([\d,]+)\]?)?"
_GR3D = re.compile(r"\bGR3D_FREQ " + _LOAD_FREQ)
_EMC = re.compile(r"\bEMC_FREQ " + _LOAD_FREQ)
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL_MW = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)mW/(\d+)mW")
_RAIL_LEGACY = re.compile(r"\b((?:POM|VDD)_[A-Z0-9_]+) (\d+)/(\d+)(?=\s|$)")


def _load_and_freq(match: re.Match | None, prefix: str, out: dict[str, float]) -> None:
    if match is None:
        return
    out[f"{prefix}_load_pct"] = float(match.group(1))
    if match.group(2):
        freqs = [float(f) for f in match.group(2).split(",") if f]
        if freqs:
            out[f"{prefix}_freq_mhz"] = sum(freqs) / len(freqs)


def _cpu_fields(body: str, out: dict[str, float]) -> None:
    loads, freqs = [], []
    for core in body.split(","):
        m = re.fullmatch(r"\s*(\d+)%(?:@(\d+))?\s*", core)
        if m:  # 'off' cores (hot-unplugged) are not counted
            loads.append(float(m.group(1)))
            if m.group(2):
                freqs.append(float(m.group(2)))
    if loads:
        out["cpu_load_pct"] = sum(loads) / len(loads)
        out["cpu_max_core_load_pct"] = max(loads)
        out["cpu_online_cores"] = float(len(loads))
    if freqs:
        out["cpu_freq_mhz"] = sum(freqs) / len(freqs)


def parse_tegrastats_line(line: str) -> dict[str, float]:
    """One ``tegrastats`` output line -> ``{metric: value}`` (empty for a line that holds no known field)."""
    out: dict[str, float] = {}
    for pattern, prefix in ((_RAM, "ram"), (_SWAP, "swap")):
        m = pattern.search(line)
        if m:
            out[f"{prefix}_used_mb"], out[f"{prefix}_total_mb"] = float(m.group(1)), float(m.group(2))
    m = _CPU.search(line)
    if m:
        _cpu_fields(m.group(1), out)
    _load_and_freq(_GR3D.search(line), "gpu", out)
    _load_and_freq(_EMC.search(line), "emc", out)
    for name, value in _TEMP.findall(line):
        if float(value) > -40:  # absent sensors read -256C (and similar) on some modules
            out[f"temp_{name.lower()}_c"] = float(value)
    rails = _RAIL_MW.findall(line) or _RAIL_LEGACY.findall(line)
    for name, current, average in rails:
        out[f"power_{name.lower()}_mw"] = float(current)
        out[f"power_{name.lower()}_avg_mw"] = float(average)
    return out


def parse_tegrastats(lines: Iterable[str]) -> list[dict[str, float]]:
    """Parse every non-empty line that holds at least one known field."""
    return [s for s in (parse_tegrastats_line(line) for line in lines if line.strip()) if s]


def summarize(samples: Iterable[Sample | dict[str, float]], start: float | None = None,
              end: float | None = None) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "max", "min", "n"}}`` over the samples (timestamped ones within [start, end])."""
    values: dict[str, list[float]] = {}
    for sample in samples:
        if isinstance(sample, tuple):
            t, metrics = sample
            if (start is not None and t < start) or (end is not None and t > end):
                continue
        else:
            metrics = sample
        for key, value in metrics.items():
            values.setdefault(key, []).append(float(value))
    return {k: {"mean": sum(v) / len(v), "max": max(v), "min": min(v), "n": len(v)} for k, v in sorted(values.items())}


class Sampler:
    """Base: ``with sampler: ...`` collects ``self.samples``; ``source`` names it in reports."""

    source = "none"

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self._lock = threading.Lock()

    def _add(self, metrics: dict[str, float]) -> None:
        if metrics:
            with self._lock:
                self.samples.append((time.perf_counter(), metrics))

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "Sampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TegrastatsSampler(Sampler):
    """Runs ``tegrastats --interval MS`` in a subprocess and parses each line as it arrives."""

    source = "tegrastats"

    def __init__(self, interval_ms: int = 200, executable: str = "tegrastats") -> None:
        super().__init__()
        self.interval_ms = interval_ms
        self.executable = executable
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen([self.executable, "--interval", str(self.interval_ms)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, name="tegrastats-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._add(parse_tegrastats_line(line))

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()  # only the process this sampler started
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._proc = None


class NvmlSampler(Sampler):
    """Polls NVML (``pynvml``, from the ``nvidia-ml-py`` package) on a thread every ``interval_s``.

    ``nvml`` is the module to use (tests pass a fake); each query that the device does not support is
    skipped, so a sample holds what the device reports.
    """

    source = "nvml"

    def __init__(self, interval_s: float = 0.1, device_index: int = 0, nvml: Any = None) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.device_index = device_index
        self.nvml = nvml
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle = None

    def start(self) -> None:
        if self.nvml is None:
            import pynvml

            self.nvml = pynvml
        self.nvml.nvmlInit()
        self._handle = self.nvml.nvmlDeviceGetHandleByIndex(self.device_index)
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="nvml-sampler", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while True:
            self._add(self.sample_once())
            if self._stop.wait(self.interval_s):
                return

    def sample_once(self) -> dict[str, float]:
        """One reading of every supported metric."""
        n, h, out = self.nvml, self._handle, {}
        queries: list[tuple[Callable[[], Any], Callable[[Any], dict[str, float]]]] = [
            (lambda: n.nvmlDeviceGetUtilizationRates(h), lambda u: {"gpu_load_pct": u.gpu, "mem_load_pct": u.memory}),
            (lambda: n.nvmlDeviceGetMemoryInfo(h),
             lambda m: {"mem_used_mb": m.used / 2**20, "mem_total_mb": m.total / 2**20}),
            (lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM), lambda c: {"gpu_freq_mhz": c}),
            (lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM), lambda c: {"mem_freq_mhz": c}),
            (lambda: n.nvmlDeviceGetPowerUsage(h), lambda p: {"power_mw": p}),
            (lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU), lambda t: {"temp_gpu_c": t}),
        ]
        for query, fields in queries:
            try:
                out.update({k: float(v) for k, v in fields(query()).items()})
            except Exception:  # NVMLError_NotSupported and friends: the device lacks this metric
                continue
        return out

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass


def _nvml_available() -> bool:
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return count > 0
    except Exception:  # no driver, no device
        return False


def open_samplers(kind: str = "auto", interval_s: float = 0.2) -> list[Sampler]:
    """Samplers present here: ``auto`` (tegrastats if on PATH, NVML if importable with a GPU), ``off``,
    ``tegrastats`` or ``nvml`` (only that one, if present). Nothing is started yet."""
    if kind == "off":
        return []
    found: list[Sampler] = []
    if kind in ("auto", "tegrastats"):
        exe = shutil.which("tegrastats") or (shutil.which("tegrastats", path="/usr/bin:/usr/sbin"))
        if exe:
            found.append(TegrastatsSampler(max(1, int(interval_s * 1000)), exe))
    if kind in ("auto", "nvml") and _nvml_available():
        found.append(NvmlSampler(interval_s))
    return found


VERSIONS_OF = ("numpy", "onnxruntime", "onnxruntime-gpu", "tokenizers", "torch", "transformers")


def _first_line(path: str) -> str | None:
    try:
        text = Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None
    return text.splitlines()[0] if text else None


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.lower().startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What this machine is, for every report that records it (profile, bench, serve load, the demo's
    model cards): CPU model, cores, memory, OS, Python, the installed versions of the libraries that do
    the work (read from package metadata, so torch is never imported), ONNX Runtime's providers, and a
    Jetson's model and L4T release where there is one."""
    from importlib.metadata import PackageNotFoundError, version

    from ...engines.onnxrt import import_onnxruntime

    onnxruntime = import_onnxruntime()
    versions = {}
    for package in VERSIONS_OF:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    info: dict[str, Any] = {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_bytes": memory,
                            "platform": platform.platform(), "machine": platform.machine(),
                            "python": platform.python_version(), "versions": versions,
                            "available_providers": onnxruntime.get_available_providers()}
    for key, path in (("jetson_model", "/proc/device-tree/model"), ("l4t_release", "/etc/nv_tegra_release")):
        if Path(path).exists():
            info[key] = _first_line(path)
    return info


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (MB), where the OS reports it."""
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if platform.system() == "Darwin" else rss / 1024


def evict_page_cache(directory: Path) -> int:
    """Drop every file under ``directory`` from the OS page cache; returns how many files were advised."""
    advised = 0
    if not hasattr(os, "posix_fadvise"):
        return advised
    for path in directory.rglob("*"):
        if not path.is_file():
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            advised += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return advised


def filesystem_type(directory: Path) -> str | None:
    """The filesystem type holding ``directory`` (Linux /proc/mounts; None elsewhere)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    target = str(directory.resolve())
    best = max((m for m in mounts if target == m[0] or target.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    return best[1] if best else None
