"""Dashboard benchmark: a job with 10,000 trials, the job page in Chromium and the trials API.

Inserts the trials through :class:`nas.store.Store` (create, start, two epoch reports, finish with
metrics and per-layer densities; every fourth trial is the child of an earlier one, as in a
lottery-ticket chain), serves the real app with uvicorn, then measures

* the trials-table API (``GET /jobs/{id}/trials/table``): latency percentiles over many pages,
  sorts and filters, and the chart columns (``/points``), densities and hypervolume once each;
* the job page in headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright): time
  from navigation to the trials table showing its first page (``nas:interactive``), to the page
  being interactive (the table shown and then no task over 50 ms for 0.5 s, the Time-to-Interactive
  rule), to every chart drawn (``nas:charts-ready``), and how long a click on a sort header takes
  to show the re-sorted page.

    python benchmarks/dashboard.py --trials 10000 --out /tmp/dashboard.json

Prints one JSON document; the numbers in BENCHMARKS.md come from it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from nas.settings import Settings
from nas.specs import JobSpec, LayerInfo, TrialState
from nas.store import Store, make_engine, upgrade

WIDTHS = (32, 64, 100, 128, 256, 300)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]

SPEC = {
    "name": "bench: 10k sparse MLPs on digits",
    "search_space": {"name": "sparse_mlp", "params": {}},
    "strategy": {"name": "random", "params": {}},
    "dataset": {"name": "digits", "params": {}},
    "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.9}},
    "training": {"epochs": 2, "batch_size": 64, "lr": 0.003},
    "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}],
    "budget": {"max_trials": 10000, "max_concurrent": 8},
}


def fake_trial(rng: random.Random) -> tuple[dict[str, Any], dict[str, float], list[LayerInfo], list[dict[str, float]]]:
    """A plausible sparse-MLP trial on digits: architecture, final metrics, layers, two epochs."""
    depth = rng.randint(1, 3)
    widths = [rng.choice(WIDTHS) for _ in range(depth)]
    arch = {"depth": depth, **{f"width_{i}": w for i, w in enumerate(widths)}, "activation": rng.choice(["relu", "tanh", "gelu"])}
    shapes = []
    fan_in = 64
    for i, w in enumerate(widths):
        shapes.append((f"fc{i}.weight", [w, fan_in]))
        fan_in = w
    shapes.append(("out.weight", [10, fan_in]))
    target = rng.choice([0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    layers = []
    params = nonzero = 0
    for name, shape in shapes:
        size = shape[0] * shape[1]
        density = min(1.0, max(0.01, (1 - target) * rng.uniform(0.6, 1.6)))
        layers.append(LayerInfo(name=name, shape=shape, density=round(density, 4), pattern="unstructured", kernel="csr" if density < 0.3 else "dense"))
        params += size
        nonzero += round(size * density)
    sparsity = 1 - nonzero / params
    accuracy = min(0.995, max(0.1, 0.985 - 0.25 * max(0.0, sparsity - 0.85) ** 1.5 - rng.uniform(0, 0.06) + 0.004 * depth))
    latency = 0.015 + nonzero / 2.5e6 + rng.uniform(0, 0.01) * depth
    metrics = {
        "accuracy": accuracy,
        "loss": -math.log(max(accuracy, 1e-3)) + rng.uniform(0, 0.05),
        "sparsity": sparsity,
        "nonzero_params": float(nonzero),
        "params": float(params),
        "flops": float(2 * params),
        "nonzero_flops": float(2 * nonzero),
        "latency_ms": latency,
        "masked_latency_ms": 0.02 + params / 1.5e6,
        "predicted_latency_ms": latency * rng.uniform(0.8, 1.25),
        "train_time_s": rng.uniform(2, 8),
    }
    epochs = [
        {"accuracy": accuracy * rng.uniform(0.7, 0.95), "loss": metrics["loss"] * rng.uniform(1.4, 2.2)},
        {"accuracy": accuracy, "loss": metrics["loss"]},
    ]
    return arch, metrics, layers, epochs


def populate(store: Store, owner: str, n_trials: int, seed: int = 0, spec: dict[str, Any] | None = None, progress: bool = False) -> str:
    """A job of ``n_trials`` trials written through the store as a runner would; returns its id."""
    rng = random.Random(seed)
    job = store.create_job(JobSpec.model_validate(spec or SPEC), owner)
    ids: list[str] = []
    started = time.perf_counter()
    for number in range(n_trials):
        arch, metrics, layers, epochs = fake_trial(rng)
        parent = ids[rng.randrange(len(ids))] if ids and number % 4 == 3 else None
        roll = rng.random()
        trial = store.create_trial(job.id, arch, parent_id=parent)
        if roll < 0.03:  # infeasible: refused before training, from queued
            store.finish_trial(trial.id, TrialState.infeasible, {"predicted_latency_ms": metrics["predicted_latency_ms"]}, error="predicted latency over the limit")
            ids.append(trial.id)
            continue
        store.start_trial(trial.id, node_id="bench", attempt=1)
        store.report_epoch(trial.id, 1, epochs[0])
        if roll < 0.10:  # pruned by early stopping after one epoch
            store.finish_trial(trial.id, TrialState.pruned, {**metrics, **epochs[0]}, layers)
        elif roll < 0.12:
            store.finish_trial(trial.id, TrialState.failed, error="RuntimeError: CUDA-free machine ran out of patience")
        else:
            store.report_epoch(trial.id, 2, epochs[1])
            store.finish_trial(trial.id, TrialState.complete, metrics, layers)
        ids.append(trial.id)
        if progress and number % 1000 == 999:
            print(f"  {number + 1} trials in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    store.set_best_trial(job.id, max(
        (t for t in store.list_trials(job.id)[0] if t.state is TrialState.complete), key=lambda t: t.metrics["accuracy"]
    ).id)
    return job.id


class Server:
    """The real app under uvicorn, in a thread of this process."""

    def __init__(self, store: Store, settings: Settings, port: int) -> None:
        import uvicorn

        from api.app import create_app

        config = uvicorn.Config(
            create_app(store, settings), host="127.0.0.1", port=port, log_level="warning", access_log=False,
            timeout_graceful_shutdown=1,  # event streams never end by themselves
        )
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    pick = lambda q: ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]  # noqa: E731
    return {"n": len(ordered), "p50_ms": round(pick(0.5), 2), "p90_ms": round(pick(0.9), 2), "p99_ms": round(pick(0.99), 2), "max_ms": round(ordered[-1], 2), "mean_ms": round(statistics.fmean(ordered), 2)}


def measure_api(url: str, key: str, job_id: str, requests: int = 400) -> dict[str, Any]:
    """Trials-table latency over a mix of pages, sorts and filters, as the dashboard asks."""
    rng = random.Random(1)
    queries = [
        {"sort": "number", "order": "desc"},
        {"sort": "metrics.accuracy", "order": "desc"},
        {"sort": "metrics.latency_ms", "order": "asc"},
        {"sort": "metrics.sparsity", "order": "desc", "filter": ["sparsity>=0.9"]},
        {"sort": "number", "order": "asc", "state": ["complete"]},
        {"sort": "metrics.accuracy", "order": "desc", "state": ["complete", "pruned"], "filter": ["accuracy>0.9", "latency_ms<0.05"]},
    ]
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        start = time.perf_counter()  # the first request builds the job's column snapshot
        client.get(f"/api/v1/jobs/{job_id}/trials/table", params={"limit": 50}).raise_for_status()
        out["first_request_ms"] = round((time.perf_counter() - start) * 1000, 1)
        for _ in range(10):  # warm-up: connections, SQLite page cache
            client.get(f"/api/v1/jobs/{job_id}/trials/table", params={"limit": 50}).raise_for_status()
        samples = []
        for i in range(requests):
            params = {**queries[i % len(queries)], "limit": 50, "offset": rng.choice([0, 50, 1000, 5000, 9000])}
            start = time.perf_counter()
            response = client.get(f"/api/v1/jobs/{job_id}/trials/table", params=params)
            samples.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
        out["trials_table"] = percentiles(samples)
        for name, path, params in [
            ("points", f"/api/v1/jobs/{job_id}/points", {}),
            ("density_100", f"/api/v1/jobs/{job_id}/density", {"sort": "metrics.accuracy", "order": "desc", "limit": 100}),
            ("hypervolume", f"/api/v1/jobs/{job_id}/hypervolume", {}),
            ("job_overview", f"/api/v1/dashboard/jobs/{job_id}", {}),
        ]:
            samples = []
            for _ in range(20):
                start = time.perf_counter()
                response = client.get(path, params=params)
                samples.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()
            out[name] = {**percentiles(samples), "bytes": len(response.content)}
    return out


# Installed before the page's scripts: collects long tasks for the Time-to-Interactive rule.
LONG_TASKS = """
window.__longTasks = [];
new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longTasks.push([e.startTime, e.duration]); })
  .observe({ type: 'longtask', buffered: true });
"""


def measure_page(url: str, key: str, job_id: str, runs: int = 5) -> dict[str, Any]:
    """Load the job page ``runs`` times (the first cold, the rest with the browser's cache)."""
    from playwright.sync_api import sync_playwright

    results: list[dict[str, float]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        # about:blank, visited between runs, has no sessionStorage
        context.add_init_script(f"try {{ sessionStorage.setItem('nas.apiKey', {json.dumps(key)}); }} catch (e) {{}}" + LONG_TASKS)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        for run in range(runs):
            page.goto("about:blank")
            page.goto(f"{url}/#/jobs/{job_id}")
            # a function, not an expression: the page's Content-Security-Policy forbids eval
            page.wait_for_function("() => performance.getEntriesByName('nas:charts-ready').length > 0", timeout=60_000)
            page.wait_for_timeout(1500)  # a quiet window after the last chart, for the TTI rule
            timing = page.evaluate(
                """() => {
                  const mark = (n) => performance.getEntriesByName(n)[0]?.startTime ?? null;
                  const interactive = mark('nas:interactive');
                  // TTI: the first 500 ms window after the table is shown with no long task in it
                  let tti = interactive;
                  for (const [start, dur] of window.__longTasks.sort((a, b) => a[0] - b[0])) {
                    if (start + dur <= tti) continue;
                    if (start - tti >= 500) break;
                    tti = start + dur;
                  }
                  const nav = performance.getEntriesByType('navigation')[0];
                  return { table_shown_ms: interactive, tti_ms: tti, charts_ms: mark('nas:charts-ready'),
                           dom_content_loaded_ms: nav.domContentLoadedEventEnd,
                           long_tasks: window.__longTasks.length,
                           long_task_total_ms: window.__longTasks.reduce((a, [, d]) => a + d, 0) };
                }"""
            )
            # a sort click: header click to the re-sorted first row
            first = page.locator("#trials-table tbody tr").first.get_attribute("data-id")
            start = time.perf_counter()
            page.click("#trials-table th[data-sort='metrics.accuracy']")
            page.wait_for_function(
                "(first) => { const r = document.querySelector('#trials-table tbody tr'); return r && r.dataset.id !== first; }",
                arg=first, timeout=10_000,
            )
            timing["sort_click_ms"] = (time.perf_counter() - start) * 1000
            page.evaluate("sessionStorage.removeItem(" + json.dumps(f"nas.table.{job_id}") + ")")
            timing["run"] = run
            results.append({k: round(v, 1) if isinstance(v, float) else v for k, v in timing.items()})
        browser.close()
    warm = results[1:] or results
    summary = {
        name: {"cold": results[0][name], "warm_median": round(statistics.median(r[name] for r in warm), 1), "warm_max": max(r[name] for r in warm)}
        for name in ("table_shown_ms", "tti_ms", "charts_ms", "sort_click_ms")
    }
    return {"runs": results, "summary": summary, "console_errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--home", type=Path, default=None, help="reuse a folder (its nas.db keeps the trials between runs)")
    parser.add_argument("--page-runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="nas-bench-dashboard-"))
    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home, data_dir=home / "data")
    engine = make_engine(settings.database_url)
    upgrade(engine)
    store = Store(engine)
    key = store.create_api_key("bench")
    jobs, _ = store.list_jobs(None, None, 10)
    existing = [j for j in jobs if j.n_trials == args.trials]
    if existing:
        job_id = existing[0].id
        insert_s = None
    else:
        print(f"inserting {args.trials} trials through the store…", file=sys.stderr)
        start = time.perf_counter()
        job_id = populate(store, "bench", args.trials, progress=True)
        insert_s = time.perf_counter() - start
        # the job belongs to 'bench'; keys of other owners would get 404
    with Server(store, settings, args.port) as server:
        api = measure_api(server.url, key, job_id)
        page = measure_page(server.url, key, job_id, runs=args.page_runs)
    result = {
        "trials": args.trials,
        "insert_s": round(insert_s, 1) if insert_s is not None else None,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "api": api,
        "page": page,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
