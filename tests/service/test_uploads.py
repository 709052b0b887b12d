"""Upload decoding: however many requests arrive at once, few images are decoded at once."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pytest
from fastapi import UploadFile
from PIL import Image

from leukoscope.service import uploads
from tests.service.conftest import cell_jpeg


def test_concurrent_decodes_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def slow_decode(data: bytes, **kwargs: Any) -> Image.Image:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return Image.new("RGB", (8, 8))

    monkeypatch.setattr(uploads, "decode_rgb", slow_decode)
    data = cell_jpeg(0)

    def upload(k: int) -> None:
        file = UploadFile(io.BytesIO(data), filename=f"{k}.jpg")
        uploads.read_upload(file, k, max_bytes=len(data), max_pixels=10**6)

    threads = [threading.Thread(target=upload, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == uploads.MAX_CONCURRENT_DECODES
