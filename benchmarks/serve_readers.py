"""N `minireranker serve --read-only` processes beside one writer on one K/V cache: each process's memory.

The writer indexes D text documents (``POST /v1/documents``); then the writer and N readers, each a real
process on its own port, rerank all of them, so every process maps every entry file. Each process's RSS,
PSS, shared and private bytes (``/proc/PID/smaps_rollup``) and the part of them in the K/V entry files it
maps (``/proc/PID/smaps``) are read with runtime/serve/memory.py, the code behind ``/metrics``. RSS summed
counts a shared page once per process that maps it; PSS summed counts it once: the difference is what
sharing saves. Writes ``serve_readers.json`` (config, machine, per process, sums) and ``serve_readers.md``.

    python benchmarks/serve_readers.py --out /tmp/serve-readers             # builds a tiny bundle (torch)
    python benchmarks/serve_readers.py --bundle B --readers 4 --documents 64 --out DIR

Linux only (it reads /proc). Figures are reported, never asserted; tests/runtime/serve/test_many_readers.py
starts its processes with :class:`ServeProcess`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUERY = "a cat sitting on a sofa"


class ServeProcess:
    """``python -m minireranker.tools.cli serve BUNDLE --cache CACHE --port 0 FLAGS``, its stderr in ``log``
    (read for the 'listening on' line: no pipe to drain); no MINIRERANKER_* variable is passed on."""

    def __init__(self, bundle: Path, cache: Path, log: Path, *flags: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MINIRERANKER_")}
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "minireranker.tools.cli", "serve", str(bundle),
                                          "--cache", str(cache), "--port", "0", *flags],
                                         stdout=subprocess.DEVNULL, stderr=err, env=env)

    def url(self, timeout: float = 120) -> str:
        """The URL once it is listening and its engines are loaded (both polled, up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            if url is None:
                match = re.search(r"listening on (http://\S+)", self.log.read_text())
                url = match.group(1) if match else None
            if url is not None and call(url, "GET", "/v1/health/ready")[0] == 200:
                return url
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with status {self.proc.returncode}: {self.log.read_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"serve was not ready within {timeout} s: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def call(url: str, method: str, path: str, body=None) -> tuple[int, object]:
    """(status, parsed JSON or text) of one request without an API key."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    except OSError:  # not listening yet
        return 0, ""
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def run_readers(bundle: Path, work: Path, readers: int, documents: int) -> dict:
    """Start the writer and ``readers`` readers on one cache under ``work``, index, rerank, measure, stop."""
    from minireranker.runtime.serve.memory import mapped_memory, process_memory

    cache = work / "cache"
    writer = ServeProcess(bundle, cache, work / "writer.log")
    servers = [("writer", writer)]
    try:
        urls = [writer.url()]
        servers += [(f"reader-{i}", ServeProcess(bundle, cache, work / f"reader-{i}.log", "--read-only"))
                    for i in range(readers)]
        docs = [{"id": f"doc-{i}", "text": f"document {i}: a cat, a sofa, {i} cushions"} for i in range(documents)]
        for start in range(0, documents, 256):  # the default --max-client-batch-size
            status, body = call(urls[0], "POST", "/v1/documents", {"documents": docs[start: start + 256]})
            if status != 200:
                raise RuntimeError(f"indexing failed: {status} {body}")
        urls += [server.url() for _, server in servers[1:]]
        ids = [{"id": d["id"]} for d in docs]
        for url in urls:
            for start in range(0, documents, 256):
                status, body = call(url, "POST", "/v1/rerank", {"query": QUERY, "documents": ids[start: start + 256]})
                if status != 200:
                    raise RuntimeError(f"rerank on {url} failed: {status} {body}")
        (namespace,) = [p for p in cache.iterdir() if p.is_dir()]
        rows = []
        for (role, server), url in zip(servers, urls):
            kv = mapped_memory(namespace, server.proc.pid)
            rows.append({"role": role, "pid": server.proc.pid, "url": url, **process_memory(server.proc.pid),
                         **{f"kv_{k}": v for k, v in kv.items()}})
        entry_bytes = sum(p.stat().st_size for p in namespace.glob("*.kv"))
    finally:
        for _, server in servers:
            server.stop()
    sums = {k: sum(r[k] for r in rows) for k in ("rss", "pss", "kv_rss", "kv_pss")}
    return {"config": {"readers": readers, "documents": documents, "entry_bytes_on_disk": entry_bytes},
            "processes": rows, "sums": {**sums, "saved_by_sharing": sums["rss"] - sums["pss"]}}


def markdown(report: dict) -> str:
    mib = 1 << 20
    lines = ["| process | RSS MiB | PSS MiB | shared MiB | private MiB | K/V files | K/V RSS KiB | K/V PSS KiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["processes"]:
        lines.append(f"| {r['role']} | {r['rss'] / mib:.1f} | {r['pss'] / mib:.1f} | {r['shared'] / mib:.1f} | "
                     f"{r['private'] / mib:.1f} | {r['kv_files']} | {r['kv_rss'] / 1024:.0f} | "
                     f"{r['kv_pss'] / 1024:.0f} |")
    s = report["sums"]
    lines.append(f"| **sum** | {s['rss'] / mib:.1f} | {s['pss'] / mib:.1f} | | | | {s['kv_rss'] / 1024:.0f} | "
                 f"{s['kv_pss'] / 1024:.0f} |")
    lines.append(f"\nSumming RSS counts shared pages once per process: {s['saved_by_sharing'] / mib:.1f} MiB more "
                 f"than the processes take together (the PSS sum). K/V entries on disk: "
                 f"{report['config']['entry_bytes_on_disk'] / 1024:.0f} KiB.")
    return "\n".join(lines) + "\n"


def _tiny_bundle(work: Path) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from serve_load import _tiny_bundle as build
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return build(work)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="bundle directory (default: build the tiny one; needs torch)")
    p.add_argument("--out", type=Path, required=True, help="folder for serve_readers.json and serve_readers.md")
    p.add_argument("--readers", type=int, default=2, help="--read-only serve processes beside the writer")
    p.add_argument("--documents", type=int, default=16, help="documents indexed by the writer, reranked by all")
    args = p.parse_args(argv)
    if not Path("/proc/self/smaps_rollup").exists():
        print("serve_readers.py reads /proc/PID/smaps_rollup: Linux 4.14 or later only", file=sys.stderr)
        return 2
    from minireranker.runtime.profiling.telemetry import machine_info

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = args.bundle or _tiny_bundle(work)
        report = run_readers(bundle, work, args.readers, args.documents)
    report["config"].update({"bundle": str(args.bundle or "tiny (built)"), "machine": machine_info()})
    (args.out / "serve_readers.json").write_text(json.dumps(report, indent=2))
    (args.out / "serve_readers.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
