"""Load test: a fixed number of concurrent clients against a running ``leukoscope serve``.

Run: .venv/bin/python benchmarks/load.py [--model DIR] [--clients 4] [--duration 20]
     [--mode classify|sample|mixed] [--postgres URL] [--images DIR]
     [--out benchmarks/results/load.json]

Starts the server itself on a free loopback port with a temporary database (SQLite, or a new
database on the PostgreSQL server ``--postgres`` names, dropped afterwards) and an API token,
with ``--model`` or else a random-weight squeezenet1_1 at 224 px (the cost of a real one).
``classify`` posts one image per request (stateless); ``sample`` stores cells in a sample;
``mixed`` is a review lab: each client fills samples with uploads, reclassifies and excludes
cells, downloads CSVs and the reviewed-cells zip and signs samples off, and all clients also
reclassify the cells of one shared sample at once. After a mixed run every record is checked
against what the clients were told (no lost upload, correction or sign-off; no correction
that started from a label the cell did not have; every frozen differential matching its
cells). Reports requests/s, p50/p95 latency (per request kind in mixed mode), failed requests
(anything but 200/201, or no answer) and the server's peak resident memory.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
from PIL import Image
from results_file import write_results
from sqlalchemy import create_engine, make_url, text

from leukoscope.classes import WBC5
from leukoscope.data import default_dataset_dir
from leukoscope.data.images import is_image_name
from leukoscope.machine import describe_machine
from leukoscope.models import ModelCard, create_model, get_config, save_model


def random_model(out: Path) -> Path:
    """Random squeezenet1_1 weights with a valid card (speed is what is measured here)."""
    config = get_config("squeezenet1_1")
    model = create_model(config.arch, len(WBC5), weights="none")
    card = ModelCard(config.arch, WBC5, model.head_config, config.preprocessing())
    save_model(out, model, card)
    return out


def load_images(folder: Path, n: int) -> tuple[list[bytes], str]:
    """Up to ``n`` images from ``folder`` (recursively), else synthetic 360 px JPEGs."""
    if folder.is_dir():
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p))
        if paths:
            step = max(1, len(paths) // n)
            return [p.read_bytes() for p in paths[::step][:n]], str(folder)
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (360, 360, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images, "synthetic 360x360 JPEG noise"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    model: Path, data_dir: Path, port: int, token: str, log: IO[bytes], db_url: str | None
) -> subprocess.Popen[bytes]:
    """``leukoscope serve`` as a child process; the token and database URL travel in its
    environment."""
    command = [sys.executable, "-m", "leukoscope", "serve", "--model", str(model)]
    command += ["--port", str(port), "--data-dir", str(data_dir)]
    env = {**os.environ, "LEUKOSCOPE_TOKEN": token}
    if db_url is not None:
        env["LEUKOSCOPE_DB_URL"] = db_url
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def peak_memory_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM), in MiB; ``None`` off Linux."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return round(kib / 1024, 1)


class PostgresDatabase:
    """A new, empty database on the server ``url`` names, dropped on exit."""

    def __init__(self, url: str) -> None:
        self.admin = create_engine(url, isolation_level="AUTOCOMMIT")
        self.name = f"leukoscope_load_{secrets.token_hex(6)}"
        self.url = make_url(url).set(database=self.name).render_as_string(hide_password=False)

    def __enter__(self) -> str:
        with self.admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {self.name}"))
        return self.url

    def __exit__(self, *_: object) -> None:
        with self.admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE {self.name} WITH (FORCE)"))
        self.admin.dispose()


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer within {timeout:.0f} s")


@dataclass
class Tally:
    """Latencies of successful requests (per kind) and failures, shared by the threads."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, seconds: float, failure: str | None, kind: str = "upload") -> None:
        with self.lock:
            if failure is None:
                self.latencies.setdefault(kind, []).append(seconds)
            else:
                key = f"{kind}: {failure}"
                self.failures[key] = self.failures.get(key, 0) + 1

    def all_latencies(self) -> list[float]:
        return [seconds for kind in self.latencies.values() for seconds in kind]


def latency_summary(seconds: list[float]) -> dict[str, float | int | None]:
    ms = np.asarray(seconds) * 1000
    if not len(ms):
        return {"requests": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    return {
        "requests": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def client_loop(
    url: str, path: str, token: str, images: list[bytes], offset: int, deadline: float, tally: Tally
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        i = offset
        while time.monotonic() < deadline:
            files = {"files": (f"cell_{i}.jpg", images[i % len(images)], "image/jpeg")}
            start = time.perf_counter()
            try:
                response = client.post(path, files=files)
                failure = None if response.status_code == 200 else f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
            tally.record(time.perf_counter() - start, failure)
            i += 1


WEIGHTS = {"upload": 0.3, "reclassify": 0.45, "export": 0.1, "signoff": 0.15}
"""Mixed mode: how often a client picks each action (sign-off once its sample has cells)."""

SHARED_SHARE = 0.4
"""Share of reclassifications made on the sample every client reviews at once."""


@dataclass
class Ledger:
    """What the server told the clients it stored; checked against the database afterwards."""

    uploaded: set[str] = field(default_factory=set)
    corrections: set[str] = field(default_factory=set)
    """Tags (the reviewer name of a single request) of corrections the server said it made."""
    signed: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class MixedClient:
    """One reviewer: fills a sample, reviews it and the shared sample, exports, signs off."""

    def __init__(
        self, k: int, url: str, token: str, images: list[bytes], shared: list[str], tally: Tally
    ) -> None:
        self.k = k
        self.rng = random.Random(k)
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        self.images = images
        self.shared = shared
        self.tally = tally
        self.sample: str | None = None
        self.cells: list[str] = []
        self.n = 0

    def call(self, kind: str, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        start = time.perf_counter()
        try:
            response = self.http.request(method, path, **kwargs)
            ok = response.status_code in (200, 201)
            failure = None if ok else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            response, failure = None, type(exc).__name__
        self.tally.record(time.perf_counter() - start, failure, kind)
        return response if failure is None else None

    def relabel(self, cell_id: str, body: dict[str, str], ledger: Ledger) -> None:
        self.n += 1
        tag = f"client {self.k} #{self.n}"
        response = self.call(
            "reclassify", "POST", f"/api/cells/{cell_id}/label", json={**body, "reviewer": tag}
        )
        if response is not None:
            corrections = response.json()["cell"]["corrections"]
            if corrections and corrections[-1]["reviewer"] == tag:
                with ledger.lock:
                    ledger.corrections.add(tag)

    def upload(self, ledger: Ledger) -> None:
        if self.sample is None:
            response = self.call("create", "POST", "/api/samples", json={"name": f"c{self.k}"})
            if response is None:
                return
            self.sample, self.cells = response.json()["id"], []
        picks = self.rng.sample(range(len(self.images)), 2)
        files = [("files", (f"cell_{i}.jpg", self.images[i], "image/jpeg")) for i in picks]
        response = self.call("upload", "POST", f"/api/samples/{self.sample}/cells", files=files)
        if response is not None:
            added = [cell["id"] for cell in response.json()["added"]]
            self.cells += added
            with ledger.lock:
                ledger.uploaded.update(added)

    def reclassify(self, ledger: Ledger) -> None:
        pool = self.shared if self.rng.random() < SHARED_SHARE or not self.cells else self.cells
        if self.rng.random() < 0.1:
            body = {"exclude": self.rng.choice(["artefact", "smudged", "not_white_cell"])}
        else:
            body = {"label": self.rng.choice(WBC5)}
        self.relabel(self.rng.choice(pool), body, ledger)

    def export(self, ledger: Ledger) -> None:
        if self.sample is not None and self.rng.random() < 0.7:
            response = self.call("export", "GET", f"/api/samples/{self.sample}/cells.csv")
            if response is not None:
                rows = response.text.count("\n") - 1
                if rows != len(self.cells):
                    with ledger.lock:
                        ledger.problems.append(
                            f"CSV of {self.sample}: {rows} rows, not {len(self.cells)}"
                        )
        else:
            self.call("export", "GET", "/api/reviewed.zip", params={"signed_off": "true"})

    def sign_off(self, ledger: Ledger) -> None:
        response = self.call("read", "GET", f"/api/samples/{self.sample}")
        if response is None:
            return
        sample = response.json()
        # A sample unlike the training data needs every counted cell confirmed, not only the
        # unidentified ones classified.
        confirm = sample["differential"]["to_confirm"] > 0
        for cell in sample["cells"]:
            if cell["exclusion"] is None and (
                cell["label"] is None or (confirm and not cell["corrections"])
            ):
                call = cell["label"] or cell["prediction"]["label"]
                self.relabel(cell["id"], {"label": call}, ledger)
        body = {"reviewer": f"client {self.k}"}
        if self.call("signoff", "POST", f"/api/samples/{self.sample}/signoff", json=body):
            with ledger.lock:
                ledger.signed.add(str(self.sample))
            self.sample, self.cells = None, []

    def run(self, deadline: float, ledger: Ledger) -> None:
        with self.http:
            while time.monotonic() < deadline:
                action = self.rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
                if action in {"reclassify", "export", "signoff"} and len(self.cells) < 4:
                    action = "upload"
                getattr(self, action if action != "signoff" else "sign_off")(ledger)


def initial_call(cell: dict[str, Any]) -> str | None:
    if cell["duplicate_of"] is not None:
        return "excluded:duplicate"
    prediction = cell["prediction"]
    return None if prediction["uncertain"] else prediction["label"]


def check_records(http: httpx.Client, ledger: Ledger) -> dict[str, Any]:
    """Compare the database, read back through the API, with what the clients were told."""
    problems = list(ledger.problems)
    samples = [http.get(f"/api/samples/{s['id']}").json() for s in http.get("/api/samples").json()]
    cells = [cell for sample in samples for cell in sample["cells"]]
    stored_tags = {c["reviewer"] for cell in cells for c in cell["corrections"]}
    lost_uploads = ledger.uploaded - {cell["id"] for cell in cells}
    lost = ledger.corrections - stored_tags
    unreported = stored_tags - ledger.corrections
    problems += [f"upload {cell_id} lost" for cell_id in sorted(lost_uploads)]
    problems += [f"correction by {tag} lost" for tag in sorted(lost)]
    problems += [f"correction by {tag} stored but not reported" for tag in sorted(unreported)]
    for cell in cells:
        call = initial_call(cell)
        for correction in cell["corrections"]:
            if correction["from_label"] != call:
                problems.append(f"cell {cell['id']}: correction from {correction['from_label']}")
            call = correction["to_label"]
    signed = {sample["id"]: sample for sample in samples if sample["signoff"]}
    problems += [f"sign-off of {s} lost" for s in sorted(ledger.signed - set(signed))]
    for sample in signed.values():
        signoff = sample["signoff"]
        at = datetime.fromisoformat(signoff["signed_at"])
        calls = Counter(
            cell["label"] or f"excluded:{cell['exclusion']}" for cell in sample["cells"]
        )
        frozen = signoff["differential"]
        expected = {row["class"]: calls[row["class"]] for row in frozen["rows"]}
        if {row["class"]: row["count"] for row in frozen["rows"]} != expected:
            problems.append(f"sample {sample['id']}: frozen differential differs from its cells")
        if any(n != calls[f"excluded:{name}"] for name, n in frozen["excluded"].items()):
            problems.append(f"sample {sample['id']}: frozen exclusions differ from its cells")
        late = [
            c
            for cell in sample["cells"]
            for c in cell["corrections"]
            if datetime.fromisoformat(c["created_at"]) > at
        ]
        if late:
            problems.append(f"sample {sample['id']}: {len(late)} correction(s) after sign-off")
    return {
        "samples": len(samples),
        "cells": len(cells),
        "corrections": sum(len(cell["corrections"]) for cell in cells),
        "signoffs": len(signed),
        "problems": len(problems),
        "problem_list": problems[:20],
    }


def run_mixed(
    url: str, token: str, images: list[bytes], clients: int, duration: float, tally: Tally
) -> dict[str, Any]:
    """``clients`` reviewers for ``duration`` seconds, then the check of every record."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        shared = http.post("/api/samples", json={"name": "shared"}).json()["id"]
        files = [("files", (f"s{i}.jpg", images[i], "image/jpeg")) for i in range(8)]
        added = http.post(f"/api/samples/{shared}/cells", files=files).json()["added"]
        ledger = Ledger(uploaded={cell["id"] for cell in added})
        workers = [
            MixedClient(k, url, token, images, [c["id"] for c in added], tally)
            for k in range(clients)
        ]
        deadline = time.monotonic() + duration
        threads = [threading.Thread(target=w.run, args=(deadline, ledger)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return check_records(http, ledger)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="trained model (default: random squeezenet)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--mode", choices=("classify", "sample", "mixed"), default="classify")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=os.environ.get("LEUKOSCOPE_TEST_POSTGRES_URL"),
        help="PostgreSQL server URL (a new database is made on it; without a URL, "
        "$LEUKOSCOPE_TEST_POSTGRES_URL, which keeps the password off the recorded command); "
        "default SQLite",
    )
    parser.add_argument("--images", type=Path, default=default_dataset_dir())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/load.json"))
    args = parser.parse_args()

    images, source = load_images(args.images, 64)
    load_before = os.getloadavg()[0]  # other work on the machine skews every number here
    token = secrets.token_urlsafe(24)
    records: dict[str, Any] | None = None
    database = PostgresDatabase(args.postgres) if args.postgres else nullcontext()
    with tempfile.TemporaryDirectory(prefix="leukoscope-load-") as tmp, database as db_url:
        work = Path(tmp)
        model = args.model or random_model(work / "model")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = (work / "server.log").open("wb")
        server = start_server(model, work, port, token, log, db_url)
        try:
            wait_ready(url, server)
            tally = Tally()
            start = time.perf_counter()
            if args.mode == "mixed":
                records = run_mixed(url, token, images, args.clients, args.duration, tally)
            else:
                run_uploads(url, token, images, args.mode, args.clients, args.duration, tally)
            elapsed = time.perf_counter() - start
            peak_mb = peak_memory_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
            server_log = (work / "server.log").read_text(errors="replace")
    if server.returncode not in (0, -15):
        print(server_log[-4000:], file=sys.stderr)

    latencies = tally.all_latencies()
    overall = latency_summary(latencies)
    failed = sum(tally.failures.values())
    results: dict[str, Any] = {
        "requests": len(latencies) + failed,
        "failed": failed,
        "failures": tally.failures,
        "requests_per_s": round((len(latencies) + failed) / elapsed, 2),
        "latency_ms_p50": overall["p50_ms"],
        "latency_ms_p95": overall["p95_ms"],
        "latency_ms_max": overall["max_ms"],
        "peak_server_memory_mb": peak_mb,
    }
    if records is not None:
        results["by_kind"] = {
            kind: latency_summary(v) for kind, v in sorted(tally.latencies.items())
        }
        results["records"] = records
    backend = (
        f"PostgreSQL on {make_url(args.postgres).render_as_string(hide_password=True)}"
        if args.postgres
        else "SQLite"
    )
    settings = {
        "clients": args.clients,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 2),
        "mode": args.mode,
        "database": backend,
        "endpoint": ENDPOINTS[args.mode],
        "images": source,
        "model": str(args.model) if args.model else "random squeezenet1_1, 224 px",
        "server": f"leukoscope serve on 127.0.0.1 (uvicorn, 1 process), {backend}, token auth",
    }
    if args.mode == "mixed":
        settings["weights"] = WEIGHTS | {"shared_sample_share_of_reclassify": SHARED_SHARE}
    for key, value in results.items():
        print(f"{key:22s} {value}")
    write_results(
        args.out,
        "load",
        results=results,
        settings=settings,
        machine={**describe_machine(), "load_average_1min_before": round(load_before, 2)},
    )
    if records is not None and (failed or records["problems"]):
        raise SystemExit("failed requests or inconsistent records (see the JSON)")


ENDPOINTS = {
    "classify": "/api/classify (1 image a request)",
    "sample": "/api/samples/{id}/cells (1 image a request)",
    "mixed": "uploads (2 images), reclassify/exclude, CSV and zip exports, sign-offs",
}


def run_uploads(
    url: str,
    token: str,
    images: list[bytes],
    mode: str,
    clients: int,
    duration: float,
    tally: Tally,
) -> None:
    """The ``classify`` and ``sample`` modes: every client posts one image a request."""
    path = "/api/classify"
    if mode == "sample":
        headers = {"Authorization": f"Bearer {token}"}
        sample = httpx.post(f"{url}/api/samples", json={"name": "load"}, headers=headers)
        path = f"/api/samples/{sample.json()['id']}/cells"
    deadline = time.monotonic() + duration
    threads = [
        threading.Thread(
            target=client_loop, args=(url, path, token, images, k * 7, deadline, tally)
        )
        for k in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
