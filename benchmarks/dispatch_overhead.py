#!/usr/bin/env python
"""Per-trial dispatch overhead of the job runner, beside plain Ray Tune and a bare Ray actor pool,
and the memory of ``nas serve`` itself.

    python benchmarks/dispatch_overhead.py [--trials N]

Every method runs the same trivial trainable (one epoch report, then the final report, then
return) on one local Ray (``ray.init(num_cpus=2)``), side by side in one run:

1. sparse-nas runner     -- a job in a SQLite store run to its end by ``workers.runner.JobRunner``
                            (strategy, store writes, artifacts: the whole path of a real job);
2. Ray Tune, defaults    -- ``tune.Tuner`` with default settings (a new actor per trial);
3. Ray Tune, reuse       -- the same with ``reuse_actors=True``;
4. bare Ray actor pool   -- ``ray.util.ActorPool`` of two actors mapping N calls.

Each is timed at N trials and at a small n: "per trial" is wall time / N (start-up included),
"marginal" is the slope (T(N) - T(n)) / (N - n), and "start-up" what is left at n = 0. Each size
runs ``--repeat`` times, interleaved with the other methods, and the fastest run counts.

5. ``nas serve`` memory: the RSS of the server process alone (uvicorn runs in it; Ray's own
   processes are not counted) when idle, and its peak while a real 4-trial job runs over REST.

Everything is written under one temporary folder, removed at the end (Ray keeps its session
logs under the system temp folder as usual). Nothing here asserts a time; the numbers are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas.net import free_port  # noqa: E402

TARGET_MS = 50.0  # sparse-nas runner, per trial
TARGET_RSS_MB = 500.0  # nas serve, peak RSS of the server process

# what every trivial trial reports: the metrics the runner and the store expect of a trial
METRICS = {
    "accuracy": 0.5,
    "loss": 1.0,
    "sparsity": 0.9,
    "nonzero_params": 10.0,
    "params": 100.0,
    "flops": 200.0,
    "latency_ms": 0.01,
    "predicted_latency_ms": 0.01,
}
MODEL_BYTES = b"\0" * 64


def trivial(config: dict[str, Any]) -> None:
    """The runner's protocol in its cheapest form: one epoch report, then the final one."""
    from ray import tune

    from workers.trainable import EPOCH_METRICS, FINAL

    tune.report({"epoch": 1, EPOCH_METRICS: dict(METRICS), **METRICS})
    tune.report({**METRICS, FINAL: {"metrics": dict(METRICS), "layers": [], "node_id": "bench"}, "model": MODEL_BYTES})


def trivial_plain(config: dict[str, Any]) -> None:
    """The same two reports without the runner's keys, for plain Tune."""
    from ray import tune

    tune.report({"epoch": 1, **METRICS})
    tune.report({"epoch": 1, "final": 1.0, **METRICS})


# -- the methods ---------------------------------------------------------------------------------


class RunnerBench:
    """Our full path: store, job, claim, JobRunner with the trivial trainable, verified after."""

    def __init__(self, home: Path) -> None:
        from nas.settings import Settings
        from nas.store import Store, make_engine, upgrade

        self.settings = Settings(home=home)
        engine = make_engine(self.settings.database_url)
        upgrade(engine)
        self.store = Store(engine)
        self.breakdown: dict[tuple[int, float], dict[str, float]] = {}  # per run: (trials, wall time)

    def __call__(self, n: int) -> float:
        from nas.specs import JobSpec, JobStatus, TrialState
        from workers.runner import JobRunner

        spec = JobSpec.model_validate(
            {
                "name": f"bench-{n}",
                "search_space": {"name": "sparse_mlp", "params": {}},
                "strategy": {"name": "random", "params": {}},
                "dataset": {"name": "digits", "params": {}},
                "budget": {"max_trials": n, "max_concurrent": 2},
            }
        )
        job = self.store.create_job(spec, "bench")
        start = time.perf_counter()
        claimed = self.store.claim_job("bench", 60)
        assert claimed == job.id, (claimed, job.id)
        runner = _timed(JobRunner)(self.store, self.settings, job.id, runner_id="bench", trainable=trivial)
        runner.run()
        elapsed = time.perf_counter() - start
        done = self.store.get_job(job.id)
        trials, _ = self.store.list_trials(job.id)
        complete = [t for t in trials if t.state is TrialState.complete]
        assert done.status is JobStatus.succeeded, f"job {done.status.value}: {done.error}"
        assert len(trials) == n and len(complete) == n, f"{len(complete)}/{len(trials)} complete, want {n}"
        claimed_at = done.started_at
        self.breakdown[n, elapsed] = {
            "first_start_s": (min(t.started_at for t in trials) - claimed_at).total_seconds(),
            "hooks_ms": 1000 * runner.hook_s / n,
            "tail_s": (done.finished_at - max(t.finished_at for t in trials)).total_seconds(),
        }
        return elapsed


def _timed(cls: type) -> type:
    """The runner with a stopwatch on the code it runs on Tune's controller thread per trial."""

    class Timed(cls):  # type: ignore[misc, valid-type]
        hook_s = 0.0

        def _clock(self, fn: Callable[..., Any], *args: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.hook_s += time.perf_counter() - start

        def next_trial(self) -> Any:
            return self._clock(super().next_trial)

        def exhausted(self) -> bool:
            return self._clock(super().exhausted)

        def trial_config(self, trial: Any) -> Any:
            return self._clock(super().trial_config, trial)

        def guard(self, fn: Any, *args: Any) -> Any:  # every store write from Tune's callbacks
            return self._clock(super().guard, fn, *args)

    return Timed


def tune_bench(storage: Path, reuse: bool) -> Callable[[int], float]:
    def run(n: int) -> float:
        from ray import tune

        start = time.perf_counter()
        tuner = tune.Tuner(
            trivial_plain,
            param_space={"x": tune.uniform(0.0, 1.0)},
            tune_config=tune.TuneConfig(num_samples=n, max_concurrent_trials=2, reuse_actors=reuse),
            run_config=tune.RunConfig(storage_path=str(storage), name=f"tune-{'reuse' if reuse else 'default'}-{n}", verbose=0),
        )
        grid = tuner.fit()
        elapsed = time.perf_counter() - start
        assert len(grid) == n and not grid.errors, (len(grid), grid.errors)
        return elapsed

    return run


def pool_bench(n: int) -> float:
    import ray
    from ray.util import ActorPool

    @ray.remote(num_cpus=1)
    class Worker:
        def run(self, i: int) -> dict[str, Any]:
            return {"epoch": 1, "i": i, **METRICS}

    start = time.perf_counter()
    actors = [Worker.remote() for _ in range(2)]
    pool = ActorPool(actors)
    results = list(pool.map(lambda a, i: a.run.remote(i), range(n)))
    elapsed = time.perf_counter() - start
    for actor in actors:
        ray.kill(actor)
    assert len(results) == n
    return elapsed


class Method:
    """One method timed at n trials and at a small n, the best of ``repeats`` runs of each."""

    def __init__(self, name: str, fn: Callable[[int], float], n: int, n_small: int, repeats: int, note: str = "") -> None:
        self.name, self.fn, self.n, self.n_small, self.repeats, self.note = name, fn, n, n_small, repeats, note
        self.small: list[float] = []
        self.big: list[float] = []

    def run_once(self) -> None:
        for n, times in ((self.n_small, self.small), (self.n, self.big)):
            print(f"  {self.name}: {n} trials (run {len(times) + 1}/{self.repeats}) ...", file=sys.stderr, flush=True)
            times.append(self.fn(n))

    def row(self) -> dict[str, Any]:
        # the minimum: what the method costs when nothing else on the machine gets in its way
        t_small, t_big = min(self.small), min(self.big)
        marginal = (t_big - t_small) / (self.n - self.n_small)
        return {
            "name": self.name,
            "n": self.n,
            "n_small": self.n_small,
            "repeats": self.repeats,
            "total_s": t_big,
            "spread_s": max(self.big) - t_big,
            "per_trial_ms": 1000 * t_big / self.n,
            "marginal_ms": 1000 * marginal,
            "startup_s": t_small - self.n_small * marginal,
            "note": self.note,
        }


# -- nas serve memory ----------------------------------------------------------------------------


def _nas_command() -> list[str]:
    script = Path(sys.executable).with_name("nas")
    if script.exists():
        return [str(script)]
    found = shutil.which("nas")
    if found:
        return [found]
    return [sys.executable, "-c", "from nas.cli import app; app()"]


def serve_memory(tmp: Path, timeout_s: float) -> dict[str, Any]:
    import httpx
    import psutil

    home = tmp / "serve-home"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NAS_DATABASE_URL", "NAS_API_KEY")}
    env["NAS_HOME"] = str(home)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v1"
    log_path = tmp / "serve.log"
    nas = _nas_command()
    with open(log_path, "wb") as log:
        server = subprocess.Popen([*nas, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    proc = psutil.Process(server.pid)
    rss = lambda: proc.memory_info().rss / 2**20  # noqa: E731

    def tree_rss() -> float:
        total = 0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    result: dict[str, Any] = {}
    descendants: list[psutil.Process] = []
    try:
        started = time.perf_counter()
        with httpx.Client(timeout=10) as http:
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"nas serve exited with {server.returncode}; see {log_path}:\n"
                                       + log_path.read_text()[-3000:])
                with contextlib.suppress(httpx.TransportError):
                    if http.get(f"{url}/healthz").status_code == 200:
                        break
                if time.perf_counter() - started > 180:
                    raise RuntimeError("nas serve did not answer /healthz within 180 s")
                time.sleep(0.2)
            result["startup_s"] = time.perf_counter() - started

            time.sleep(2.0)  # let start-up settle
            idle = []
            for _ in range(25):  # 5 s idle
                idle.append(rss())
                time.sleep(0.2)
            result["idle_mb"] = max(idle)
            result["idle_median_mb"] = statistics.median(idle)

            keys = subprocess.run([*nas, "keys", "create", "bench"], env=env, capture_output=True, text=True, check=True)
            key = keys.stdout.strip().splitlines()[-1].strip()
            headers = {"Authorization": f"Bearer {key}"}
            spec = {
                "name": "bench: serve memory",
                "search_space": {"name": "sparse_mlp", "params": {}},
                "strategy": {"name": "random", "params": {}},
                "dataset": {"name": "digits", "params": {}},
                "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.9}},
                "training": {"epochs": 3, "batch_size": 64},
                "budget": {"max_trials": 4, "max_concurrent": 2},
            }
            response = http.post(f"{url}/jobs", json=spec, headers=headers)
            assert response.status_code == 201, response.text
            job_id = response.json()["id"]
            peak, peak_tree = max(idle), tree_rss()
            job_started = time.perf_counter()
            last_poll = 0.0
            status = "queued"
            while True:
                peak = max(peak, rss())
                peak_tree = max(peak_tree, tree_rss())
                now = time.perf_counter()
                if now - last_poll >= 0.5:
                    last_poll = now
                    job = http.get(f"{url}/jobs/{job_id}", headers=headers).json()
                    status = job["status"]
                    if status in ("succeeded", "failed", "cancelled"):
                        break
                if now - job_started > timeout_s:
                    raise RuntimeError(f"the job did not end within {timeout_s} s (status {status})")
                time.sleep(0.2)
            result.update(
                job_status=status,
                job_s=time.perf_counter() - job_started,
                job_trials=f"{job['n_complete']}/{job['n_trials']}",
                peak_mb=peak,
                peak_tree_mb=peak_tree,
                after_mb=rss(),
            )
            if status != "succeeded":
                raise RuntimeError(f"the job ended {status}: {job.get('error')}")
    finally:
        with contextlib.suppress(psutil.Error):
            descendants = proc.children(recursive=True)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                result["exit_code"] = server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                result["exit_code"] = server.wait()
                result["killed"] = True
        # Ray processes the server started and left behind (it should stop them itself)
        leftovers = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        result["leftover_processes"] = len(leftovers)
        for p in leftovers:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        psutil.wait_procs(leftovers, timeout=10)
    return result


# -- report --------------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    import ray
    import torch

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def render(rows: list[dict[str, Any]], memory: dict[str, Any] | None, info: dict[str, str], argv: str) -> str:
    out = [f"command: {argv}", ""]
    out.append(
        f"machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, Ray {info['ray']}, "
        f"torch {info['torch']}; {info['date']}; load average (1, 5, 15 min) at start {info['load']}, at end {info.get('load_end', '?')}"
    )
    out += ["", "| method | trials | total s | per trial ms | marginal ms | start-up s | vs target |",
            "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["name"] == "sparse-nas runner":
            ok = r["per_trial_ms"] <= TARGET_MS
            verdict = f"{'met' if ok else 'MISSED'}: target <= {TARGET_MS:.0f} ms"
        else:
            ours = next((x for x in rows if x["name"] == "sparse-nas runner"), None)
            verdict = f"{r['per_trial_ms'] / ours['per_trial_ms']:.1f}x ours" if ours else "-"
        trials = f"{r['n']} (and {r['n_small']})" + (f" {r['note']}" if r["note"] else "")
        trials += f", best of {r['repeats']}" if r["repeats"] > 1 else ""
        out.append(
            f"| {r['name']} | {trials} | {r['total_s']:.2f} | {r['per_trial_ms']:.1f} | {r['marginal_ms']:.1f} "
            f"| {r['startup_s']:.2f} | {verdict} |"
        )
    out.append("")
    ours = next((r for r in rows if "breakdown" in r), None)
    if ours is not None:
        b = ours["breakdown"]
        out.append(
            f"sparse-nas runner, its fastest {ours['n']}-trial run: {b['first_start_s']:.1f} s from the claim to the "
            f"first trial's start (Tune starting its trial actors), {b['hooks_ms']:.1f} ms per trial in sparse-nas "
            f"code on Tune's controller thread (searcher and persistence callbacks: store writes, strategy, "
            f"artifact), {b['tail_s']:.1f} s from the last trial's end to the job's end (Tune shutting down)."
        )
        out.append("")
    out.append("per trial = total / trials (start-up included); marginal = (T(N) - T(n)) / (N - n); "
               "start-up = T(n) - n * marginal; with several runs, the fastest of each size counts "
               "(slowest minus fastest at N: "
               + ", ".join(f"{r['name']} {r['spread_s']:.1f} s" for r in rows if r["repeats"] > 1) + ").")
    if memory is not None:
        ok = memory["peak_mb"] < TARGET_RSS_MB
        out += [
            "",
            f"nas serve RSS (server process only): idle {memory['idle_mb']:.0f} MB "
            f"(median {memory['idle_median_mb']:.0f} MB), peak {memory['peak_mb']:.0f} MB during a "
            f"{memory['job_trials']}-trial job ({memory['job_status']}, {memory['job_s']:.1f} s), "
            f"{memory['after_mb']:.0f} MB after it; target < {TARGET_RSS_MB:.0f} MB: {'met' if ok else 'MISSED'}",
            f"for information, the whole process tree incl. Ray's processes peaked at {memory['peak_tree_mb']:.0f} MB; "
            f"server ready in {memory['startup_s']:.1f} s; exit code after SIGTERM {memory.get('exit_code')}"
            + (" (killed after 60 s)" if memory.get("killed") else "")
            + f"; Ray processes left behind: {memory['leftover_processes']}",
        ]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trials per method (default 200)")
    parser.add_argument("--small", type=int, default=None, help="the small n for the slope (default trials/10)")
    parser.add_argument("--default-trials", type=int, default=20,
                        help="trials for Ray Tune with default settings, which costs ~2 s a trial (default 20)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each size; the fastest counts (default 3)")
    parser.add_argument("--default-repeat", type=int, default=1, help="runs of each size for Tune defaults (default 1)")
    parser.add_argument("--skip-serve", action="store_true", help="skip the nas serve memory measurement")
    args = parser.parse_args()
    n = args.trials
    n_small = args.small or max(2, n // 10)
    n_default = min(args.default_trials, n)
    if not 1 <= n_small < n:
        parser.error("need 1 <= --small < --trials")

    tmp = Path(tempfile.mkdtemp(prefix="nas-bench-"))
    os.environ["NAS_HOME"] = str(tmp / "home")
    os.environ.pop("NAS_DATABASE_URL", None)
    # A new local Ray cluster writes a token to ~/.ray/auth_token unless one is given: give one.
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    # the runner's module sets these for its process; plain Tune gets the same, so that the logger
    # callbacks (which the runner switches off) are not what separates the methods
    import workers.runner  # noqa: F401
    import ray

    info = machine_info()
    rows: list[dict[str, Any]] = []
    memory = None
    try:
        print(f"starting Ray (num_cpus=2); work folder {tmp}", file=sys.stderr, flush=True)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        runner = RunnerBench(tmp / "home")
        tune_default = tune_bench(tmp / "tune", reuse=False)
        tune_reuse = tune_bench(tmp / "tune", reuse=True)
        print("warming up", file=sys.stderr, flush=True)
        runner(4)
        tune_reuse(4)
        pool_bench(10)

        methods = [
            Method("sparse-nas runner", runner, n, n_small, args.repeat),
            Method("Ray Tune, defaults", tune_default, n_default, max(2, n_default // 4), args.default_repeat,
                   note="(fewer: ~2 s/trial)" if n_default < n else ""),
            Method("Ray Tune, reuse_actors=True", tune_reuse, n, n_small, args.repeat),
            Method("bare Ray actor pool", pool_bench, n, n_small, args.repeat),
        ]
        # interleaved, so that a burst of load elsewhere on the machine hits every method alike
        for rep in range(max(m.repeats for m in methods)):
            for method in methods:
                if rep < method.repeats:
                    method.run_once()
        rows = [m.row() for m in methods]
        rows[0]["breakdown"] = runner.breakdown[n, min(methods[0].big)]
        ray.shutdown()
        if not args.skip_serve:
            print("nas serve memory ...", file=sys.stderr, flush=True)
            memory = serve_memory(tmp, timeout_s=600)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    argv = "python benchmarks/dispatch_overhead.py" + ("".join(f" {a}" for a in sys.argv[1:]))
    print(render(rows, memory, info, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
