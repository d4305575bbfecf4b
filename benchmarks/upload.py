#!/usr/bin/env python
"""Upload: a 1 GiB dataset streamed into ``nas serve``, with the API process's memory and the throughput.

    python benchmarks/upload.py [--size-mib 1024] [--sample-ms 50]

What it does, start to end (everything under one temporary folder, removed at the end):

1. writes the upload to disk: an ``.npz`` of CIFAR-shaped float32 images ``x`` (N, 3, 32, 32),
   standard normal, and integer labels ``y`` over 10 classes, ``--size-mib`` in all. It is
   written member by member from 50 MB chunks, so this script never holds it in memory. An
   ``.npz`` makes the server do the work a real upload of arrays costs it: every byte is parsed
   out of the multipart body, hashed and written once, then the ingest reads the arrays, checks
   them (finite, labels), splits them (stratified) and writes the standardised canonical file;
2. starts the real ``nas serve --max-jobs 0`` (SQLite in a fresh ``NAS_HOME``; no dispatcher,
   hence no Ray, since an upload needs neither) and, beside it, the baselines' FastAPI app under
   uvicorn (:func:`peer_app`); mints a key and uploads a tiny ``.npz``
   first: the API starts its work pool on first use, and that start-up (seconds: the workers
   import their libraries) is reported on its own instead of inside the big upload's time;
3. samples the resident memory (RSS) of the API process (``nas serve`` itself: with one API
   worker uvicorn runs in it) every ``--sample-ms``, and of each of its child processes (the
   work pool, where the ingest runs), from 3 s before the upload to the end;
4. uploads the file with httpx as multipart, streamed from disk: the transfer ends when httpx has
   read the file's last byte, the upload when the 201 with the stored dataset arrives (the
   ingest runs between the two);
5. then ``--rounds`` times, interleaved so that the VM's changing speed hits all alike: copies
   the file on the same disk (1 MiB reads and writes, no fsync, as the server does not fsync
   either), uploads it to the baselines' app twice (HTTP on the loopback alone, and the usual
   FastAPI ``UploadFile``), and uploads it to ``nas serve`` again: the same owner, bytes and
   options answer 200 with the stored dataset, so that pass is the API's streaming path alone
   (multipart parsing, hashing, the temporary file);
6. prints what it measured; nothing is asserted (target: the API process grows < 100 MB).

MB here is 10^6 bytes, for sizes, speeds and memory alike.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, UploadFile  # at module level: the routes' annotations are strings

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas.net import free_port  # noqa: E402

MB = 1e6
TARGET_GROWTH_MB = 100.0
IMAGE_SHAPE = (3, 32, 32)
CHUNK_IMAGES = 4096  # 50 MB of float32 images per write
COPY_CHUNK = 1 << 20


# -- the upload ----------------------------------------------------------------------------------


def write_upload(path: Path, size_bytes: int, seed: int = 0) -> int:
    """An ``.npz`` of about ``size_bytes``: ``x`` float32 images and ``y`` int64 labels; returns N."""
    rng = np.random.default_rng(seed)
    per_example = int(np.prod(IMAGE_SHAPE)) * 4 + 8
    n = size_bytes // per_example
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f4", "fortran_order": False, "shape": (n, *IMAGE_SHAPE)}
            np.lib.format.write_array_header_1_0(member, header)
            for start in range(0, n, CHUNK_IMAGES):
                count = min(CHUNK_IMAGES, n - start)
                member.write(rng.standard_normal((count, *IMAGE_SHAPE), dtype=np.float32).tobytes())
        with archive.open("y.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, rng.integers(0, 10, n, dtype=np.int64))
    return n


class TimedFile:
    """A file that notes when its first and last bytes were read (by httpx, sending them)."""

    def __init__(self, path: Path) -> None:
        self.handle = path.open("rb")
        self.first: float | None = None
        self.last: float | None = None

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        if chunk:
            now = time.perf_counter()
            self.first = self.first or now
            self.last = now
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def fileno(self) -> int:
        return self.handle.fileno()

    def close(self) -> None:
        self.handle.close()


@dataclass
class Upload:
    status: int
    started: float
    transfer_s: float
    total_s: float
    body: dict[str, Any]


def upload(url: str, path: Path, headers: dict[str, str] | None = None) -> Upload:
    """POST ``path`` as the multipart part ``file``, streamed from disk (httpx reads it in chunks)."""
    import httpx

    timed = TimedFile(path)
    try:
        started = time.perf_counter()
        response = httpx.post(
            url, headers=headers or {}, files={"file": (path.name, timed, "application/octet-stream")}, timeout=3600
        )
        ended = time.perf_counter()
    finally:
        timed.close()
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    return Upload(response.status_code, started, (timed.last or ended) - started, ended - started, body)


# -- baselines -----------------------------------------------------------------------------------


def copy_file(source: Path, target: Path) -> float:
    """Seconds to copy ``source`` to ``target`` in 1 MiB reads and writes."""
    started = time.perf_counter()
    with source.open("rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, COPY_CHUNK)
    return time.perf_counter() - started


def peer_app() -> Any:
    """The baselines' server: ``POST /raw`` reads the body and keeps none of it (HTTP alone);
    ``POST /form`` takes the file as FastAPI's ``UploadFile`` (Starlette's multipart parser,
    python-multipart, the file spooled to a temporary file): the usual way to take an upload."""
    app = FastAPI()

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
        return {"bytes": total}

    @app.post("/form")
    async def form(file: UploadFile) -> dict[str, int]:
        return {"bytes": file.size or 0}

    return app


def run_peer(port: int) -> None:
    import uvicorn

    uvicorn.run(peer_app(), host="127.0.0.1", port=port, log_level="warning")


def wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            httpx.get(url, timeout=1)
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


# -- nas serve -----------------------------------------------------------------------------------


def nas_command() -> list[str]:
    script = Path(sys.executable).with_name("nas")
    return [str(script)] if script.exists() else [shutil.which("nas") or "nas"]


@dataclass
class Samples:
    """RSS over time: the API process, and its children (the work pool) by pid."""

    times: list[float] = field(default_factory=list)
    api: list[float] = field(default_factory=list)
    children: list[dict[int, float]] = field(default_factory=list)

    def api_peak(self, start: float, end: float) -> float:
        return max((rss for t, rss in zip(self.times, self.api) if start <= t <= end), default=float("nan"))

    def child_peak(self, start: float, end: float) -> tuple[float, float]:
        """The largest single child, and the largest sum over all children, in ``[start, end]``."""
        window = [c for t, c in zip(self.times, self.children) if start <= t <= end]
        return max((max(c.values(), default=0.0) for c in window), default=0.0), max(
            (sum(c.values()) for c in window), default=0.0
        )


class Sampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.samples = Samples()
        self.halt = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.halt.is_set():
            now = time.perf_counter()
            api = self.process.memory_info().rss / MB
            children: dict[int, float] = {}
            for child in self.process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    children[child.pid] = child.memory_info().rss / MB
            self.samples.times.append(now)
            self.samples.api.append(api)
            self.samples.children.append(children)
            self.halt.wait(self.interval_s)


def start(command: list[str], env: dict[str, str], log: Path, health_url: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_up(process, health_url, log)
    except BaseException:
        stop(process)
        raise
    return process


@dataclass
class Run:
    """Everything one run measured."""

    first_use_s: float
    new: Upload
    copies_s: list[float]
    raws: list[Upload]
    forms: list[Upload]
    agains: list[Upload]
    samples: Samples
    peer_samples: Samples
    idle_end: float
    exit_code: int | None = None


def measure(tmp: Path, path: Path, rounds: int, interval_s: float) -> Run:
    home = tmp / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NAS_DATABASE_URL", "NAS_API_KEY")}
    env["NAS_HOME"] = str(home)
    nas = nas_command()
    key = subprocess.run([*nas, "keys", "create", "bench"], env=env, capture_output=True, text=True, check=True)
    headers = {"Authorization": f"Bearer {key.stdout.strip().splitlines()[-1]}"}
    port, peer_port = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{port}/api/v1", f"http://127.0.0.1:{peer_port}"
    peer = start([sys.executable, __file__, "--peer", str(peer_port)], env, tmp / "peer.log", f"{peer_url}/docs")
    try:
        server = start([*nas, "serve", "--port", str(port), "--max-jobs", "0"], env, tmp / "serve.log", f"{url}/healthz")
        try:
            warm_up = tmp / "warm-up.npz"
            np.savez(warm_up, x=np.arange(40, dtype=np.float32).reshape(20, 2), y=np.arange(20) % 2)
            first_use = upload(f"{url}/datasets", warm_up, headers)
            if first_use.status != 201:
                raise RuntimeError(f"the warm-up upload answered {first_use.status}: {first_use.body}")
            sampler, peer_sampler = Sampler(server.pid, interval_s), Sampler(peer.pid, interval_s)
            sampler.start()
            peer_sampler.start()
            time.sleep(3.0)
            idle_end = time.perf_counter()
            print("  the upload", file=sys.stderr, flush=True)
            new = upload(f"{url}/datasets", path, headers)
            if new.status != 201:
                raise RuntimeError(f"the upload answered {new.status}: {new.body}\n{(tmp / 'serve.log').read_text()[-3000:]}")
            copies, raws, forms, agains = [], [], [], []
            for round_ in range(rounds):
                print(f"  round {round_ + 1} of {rounds}: disk copy, the two baselines, the same bytes again",
                      file=sys.stderr, flush=True)
                copies.append(copy_file(path, tmp / "copy.npz"))
                (tmp / "copy.npz").unlink()
                raws.append(upload(f"{peer_url}/raw", path))
                forms.append(upload(f"{peer_url}/form", path))
                agains.append(upload(f"{url}/datasets", path, headers))
            for each in (sampler, peer_sampler):
                each.halt.set()
                each.join()
            failed = [u for u in raws + forms + agains if u.status != 200]
            if failed:
                raise RuntimeError(f"a repeated upload answered {failed[0].status}: {failed[0].body}")
            return Run(first_use.total_s, new, copies, raws, forms, agains, sampler.samples, peer_sampler.samples,
                       idle_end, stop(server))
        finally:
            stop(server)
    finally:
        stop(peer)


# -- report --------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB; Python {platform.python_version()}"


def report(size: int, n: int, write_s: float, run: Run, interval_ms: float, loads: tuple[str, str]) -> str:
    mbps = lambda seconds: size / MB / seconds  # noqa: E731

    def row(what: str, seconds: list[float]) -> str:
        speeds = sorted(mbps(s) for s in seconds)
        return f"| {what} | {', '.join(f'{mbps(s):.0f}' for s in seconds)} | {statistics.median(speeds):.0f} |"

    new, samples = run.new, run.samples
    transfer_end, answer = new.started + new.transfer_s, new.started + new.total_s
    rounds_start = answer
    idle = max(rss for t, rss in zip(samples.times, samples.api) if t <= run.idle_end)
    streaming = samples.api_peak(new.started, transfer_end)
    ingesting = samples.api_peak(transfer_end, answer)
    repeated = samples.api_peak(rounds_start, float("inf"))
    growth = max(streaming, ingesting, repeated) - idle
    pool_idle, pool_peak = samples.child_peak(0, run.idle_end), samples.child_peak(new.started, answer)
    peer_idle = run.peer_samples.api_peak(0, run.idle_end)
    peer_peak = run.peer_samples.api_peak(rounds_start, float("inf"))
    dataset = new.body
    return "\n".join([
        f"command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}",
        f"machine: {machine()}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"load average (1, 5, 15 min) at start {loads[0]}, at end {loads[1]}",
        f"upload: {size / MB:.0f} MB .npz, x float32 {(n, *IMAGE_SHAPE)}, y int64, 10 classes "
        f"(written in {write_s:.1f} s); stored as {dataset['n_train']} train + {dataset['n_test']} test examples, "
        f"{dataset['stored_bytes'] / MB:.0f} MB kept",
        "",
        f"`POST /datasets`, new: {new.status}; the transfer {new.transfer_s:.1f} s ({mbps(new.transfer_s):.0f} MB/s), "
        f"reading and storing it (the ingest) {new.total_s - new.transfer_s:.1f} s, the answer after "
        f"{new.total_s:.1f} s ({mbps(new.total_s):.0f} MB/s end to end)",
        "",
        "| the same bytes through | MB/s, each round | median MB/s |",
        "|---|---|---:|",
        row("a disk copy (1 MiB reads and writes)", run.copies_s),
        row("HTTP alone: a FastAPI route that reads the body and keeps none of it", [u.total_s for u in run.raws]),
        row("FastAPI's `UploadFile` (Starlette's multipart parser, spooled to a temp file)",
            [u.total_s for u in run.forms]),
        row("`POST /datasets`, the same bytes again (parsed, hashed, to a temp file, found stored: 200)",
            [u.total_s for u in run.agains]),
        "",
        "| process | idle MB | peak, streaming MB | peak, ingesting MB | peak, the rounds MB | growth MB |",
        "|---|---:|---:|---:|---:|---:|",
        f"| API (`nas serve`) | {idle:.0f} | {streaming:.0f} | {ingesting:.0f} | {repeated:.0f} | {growth:.0f} "
        f"(target < {TARGET_GROWTH_MB:.0f}: {'met' if growth < TARGET_GROWTH_MB else 'MISSED'}) |",
        f"| work pool, largest process (the ingest) | {pool_idle[0]:.0f} | - | {pool_peak[0]:.0f} | - | "
        f"{pool_peak[0] - pool_idle[0]:.0f} |",
        f"| work pool, all processes | {pool_idle[1]:.0f} | - | {pool_peak[1]:.0f} | - | {pool_peak[1] - pool_idle[1]:.0f} |",
        f"| the baselines' FastAPI app | {peer_idle:.0f} | - | - | {peer_peak:.0f} | {peer_peak - peer_idle:.0f} |",
        "",
        f"RSS sampled every {interval_ms:.0f} ms ({len(samples.times)} samples); every repeat and baseline answered "
        "200; the server's "
        f"first upload (a tiny .npz, before the measurement, starting the work pool) took {run.first_use_s:.1f} s; "
        f"nas serve exit code after SIGTERM {run.exit_code}",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the upload in MiB (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the baselines and the repeated upload (default 3)")
    parser.add_argument("--sample-ms", type=float, default=50.0, help="RSS sampling interval (default 50 ms)")
    parser.add_argument("--peer", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the baselines' server
    args = parser.parse_args()
    if args.peer:
        run_peer(args.peer)
        return 0

    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="nas-bench-upload-"))
    try:
        path = tmp / "upload.npz"
        print(f"writing {args.size_mib} MiB to {path}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        n = write_upload(path, args.size_mib << 20)
        write_s = time.perf_counter() - started
        run = measure(tmp, path, args.rounds, args.sample_ms / 1000)
        load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(report(path.stat().st_size, n, write_s, run, args.sample_ms, (load_start, load_end)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
