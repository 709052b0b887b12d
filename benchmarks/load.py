"""Load test: a fixed number of concurrent clients against a running ``leukoscope serve``.

Run: .venv/bin/python benchmarks/load.py [--model DIR] [--clients 4] [--duration 20]
     [--mode classify|sample] [--images DIR] [--out benchmarks/results/load.json]

Starts the server itself on a free loopback port with a temporary database and an API token,
with ``--model`` or else a random-weight squeezenet1_1 at 224 px (the cost of a real one).
Each client posts one image per request for the duration: ``classify`` is stateless,
``sample`` stores cells in a sample (database writes). Reports requests/s, p50/p95 latency and
failed requests (anything but 200, or no answer).
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import numpy as np
from PIL import Image
from results_file import write_results

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
    model: Path, data_dir: Path, port: int, token: str, log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """``leukoscope serve`` as a child process; the token travels in its environment."""
    command = [sys.executable, "-m", "leukoscope", "serve", "--model", str(model)]
    command += ["--port", str(port), "--data-dir", str(data_dir)]
    env = {**os.environ, "LEUKOSCOPE_TOKEN": token}
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


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
    """Latencies of successful requests and failures, shared by the client threads."""

    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, seconds: float, failure: str | None) -> None:
        with self.lock:
            if failure is None:
                self.latencies.append(seconds)
            else:
                self.failures[failure] = self.failures.get(failure, 0) + 1


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="trained model (default: random squeezenet)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--mode", choices=("classify", "sample"), default="classify")
    parser.add_argument("--images", type=Path, default=default_dataset_dir())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/load.json"))
    args = parser.parse_args()

    images, source = load_images(args.images, 64)
    load_before = os.getloadavg()[0]  # other work on the machine skews every number here
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="leukoscope-load-") as tmp:
        work = Path(tmp)
        model = args.model or random_model(work / "model")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = (work / "server.log").open("wb")
        server = start_server(model, work, port, token, log)
        try:
            wait_ready(url, server)
            headers = {"Authorization": f"Bearer {token}"}
            path = "/api/classify"
            if args.mode == "sample":
                sample = httpx.post(f"{url}/api/samples", json={"name": "load"}, headers=headers)
                path = f"/api/samples/{sample.json()['id']}/cells"
            tally = Tally()
            threads = []
            start = time.perf_counter()
            deadline = time.monotonic() + args.duration
            for k in range(args.clients):
                work_args = (url, path, token, images, k * 7, deadline, tally)
                threads.append(threading.Thread(target=client_loop, args=work_args))
                threads[-1].start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
            server_log = (work / "server.log").read_text(errors="replace")
    if server.returncode not in (0, -15):
        print(server_log[-4000:], file=sys.stderr)

    latencies = np.asarray(tally.latencies) * 1000
    done = len(latencies)
    failed = sum(tally.failures.values())
    results = {
        "requests": done + failed,
        "failed": failed,
        "failures": tally.failures,
        "requests_per_s": round((done + failed) / elapsed, 2),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1) if done else None,
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 1) if done else None,
        "latency_ms_max": round(float(latencies.max()), 1) if done else None,
    }
    settings = {
        "clients": args.clients,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 2),
        "mode": args.mode,
        "endpoint": "/api/samples/{id}/cells" if args.mode == "sample" else "/api/classify",
        "images_per_request": 1,
        "images": source,
        "model": str(args.model) if args.model else "random squeezenet1_1, 224 px",
        "server": "leukoscope serve on 127.0.0.1 (uvicorn, 1 process), SQLite, token auth",
    }
    for key, value in results.items():
        print(f"{key:16s} {value}")
    write_results(
        args.out,
        "load",
        results=results,
        settings=settings,
        machine={**describe_machine(), "load_average_1min_before": round(load_before, 2)},
    )


if __name__ == "__main__":
    main()
