"""Inference speed and a description of the machine it was measured on.

Speeds mean little without the machine, so both are reported together: latency at batch 1
(median, robust to scheduler hiccups) and throughput at batch 64.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from leukoscope.machine import describe_machine


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_inference(
    model: nn.Module,
    input_size: int,
    device: torch.device,
    *,
    latency_runs: int = 30,
    throughput_batch: int = 64,
    throughput_runs: int = 3,
    warmup: int = 2,
) -> dict[str, Any]:
    """Median ms per image at batch 1 and images per second at ``throughput_batch``.

    ``model`` takes uint8 RGB pixels (N, H, W, 3), like
    :class:`~leukoscope.inference.predictor.PixelModel`, so normalisation and test-time views
    are timed with the network.
    """
    model.eval().to(device)
    shape = (input_size, input_size, 3)
    one = torch.randint(0, 256, (1, *shape), dtype=torch.uint8, device=device)
    many = torch.randint(0, 256, (throughput_batch, *shape), dtype=torch.uint8, device=device)
    for _ in range(warmup):
        model(one)
        model(many)
    latencies = []
    for _ in range(latency_runs):
        _synchronise(device)
        start = time.perf_counter()
        model(one)
        _synchronise(device)
        latencies.append((time.perf_counter() - start) * 1000)
    _synchronise(device)
    start = time.perf_counter()
    for _ in range(throughput_runs):
        model(many)
    _synchronise(device)
    elapsed = time.perf_counter() - start
    return {
        "input_size": input_size,
        "batch1_ms_median": statistics.median(latencies),
        "batch1_runs": latency_runs,
        "throughput_images_per_s": throughput_batch * throughput_runs / elapsed,
        "throughput_batch": throughput_batch,
        "throughput_runs": throughput_runs,
        "machine": {**describe_machine(), "device": str(device)},
    }
