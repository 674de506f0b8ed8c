"""The captioner demo's file cache stays bounded: 300 uploads, and the folder is back to its
start-up contents a few seconds later.

Why: a demo left running for a month on a public address receives uploads (up to 10 MB each)
and writes one attention panel per caption word; Gradio keeps every one of them as a file in
its cache folder, each in a folder of its own, and without `delete_cache` nothing is ever
removed. The page is launched as the commands launch it (`shared.serving.launch`) with a fast
schedule (look every second, delete what is older than a few seconds) and a cache folder of its
own (GRADIO_TEMP_DIR). `USERS` users upload `UPLOADS` pictures in all through the upload route
gradio_client uses, and have every `CAPTION_EVERY`-th captioned (gradio_client `predict`, which
uploads it again and brings back 3 panels); then, after a few rounds of cleaning, the folder
holds no more files, bytes or folders than it did after start-up (the cached examples).
Bounded: every wait has a deadline, and the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from captioner import app as caption_app
from shared import serving
from tests.captioner.test_app import free_port, write_fake_captioner

pytestmark = pytest.mark.slow

UPLOADS = 300
CAPTION_EVERY = 10  # 30 of the uploads are captioned too
USERS = 4
DELETE_CACHE = (1, 8)  # (look every, delete after) seconds; a captioned upload waits in the queue
TOTAL_TIMEOUT = 90  # seconds for all requests: a hang guard, not a speed claim
# How long the cleaning may take to catch up afterwards: a file is deleted at most one round
# after it is `age` old (its folder with it), a leftover empty folder after twice that; plus
# room for a loaded machine. A deadline, not a speed claim: the loop below ends when clean.
SETTLE_SECONDS = 2 * (DELETE_CACHE[0] + DELETE_CACHE[1]) + 30


def cache_contents(folder: Path) -> tuple[set[Path], set[Path], int]:
    """-> (files, folders, bytes of the files) under `folder`."""
    files, folders, size = set(), set(), 0
    for root, directories, names in os.walk(folder):
        folders.update(Path(root, name) for name in directories)
        for name in names:
            path = Path(root, name)
            try:
                size += path.stat().st_size
            except FileNotFoundError:  # deleted meanwhile
                continue
            files.add(path)
    return files, folders, size


def picture(folder: Path, number: int) -> Path:
    """A small picture no other request sends (one pixel differs), so each is a new file."""
    image = Image.new("RGB", (48, 32), (30, 40, 200))
    image.putpixel((number % 48, number // 48 % 32), (number % 256, 255, 0))
    path = folder / f"upload-{number}.png"
    image.save(path)
    return path


def test_three_hundred_uploads_leave_the_cache_as_it_started(tmp_path, monkeypatch):
    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))  # read when the page is built
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    write_fake_captioner(tmp_path / "runs" / "captioner")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    paths = [picture(uploads, number) for number in range(UPLOADS)]

    demo = caption_app.build_app(tmp_path / "runs" / "captioner", delete_cache=DELETE_CACHE)
    assert demo.delete_cache == DELETE_CACHE
    pool = concurrent.futures.ThreadPoolExecutor(USERS)
    try:
        _, url, _ = serving.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
        assert url.startswith("http://127.0.0.1:")
        start_files, start_folders, start_bytes = cache_contents(cache)

        def user(numbers: list[int]) -> list[str]:
            """Uploads its pictures as gradio_client does; -> the captions it asked for."""
            client = Client(url, verbose=False, download_files=False)
            captions = []
            with httpx.Client(headers=client.headers, cookies=client.cookies) as http:
                for number in numbers:
                    if number % CAPTION_EVERY == 0:
                        answer = client.predict(handle_file(paths[number]), 1, api_name="/caption")
                        captions.append(answer[0])
                        continue
                    with open(paths[number], "rb") as upload:
                        sent = http.post(client.upload_url, files=[("files", upload)])
                    sent.raise_for_status()
                    assert Path(sent.json()[0]).is_relative_to(cache)
            return captions

        futures = [pool.submit(user, list(range(i, UPLOADS, USERS))) for i in range(USERS)]
        finished, pending = concurrent.futures.wait(futures, timeout=TOTAL_TIMEOUT)
        assert not pending, f"requests still running after {TOTAL_TIMEOUT} s"
        captions = [caption for future in finished for caption in future.result()]
        assert captions == ["a blue image"] * (UPLOADS // CAPTION_EVERY)

        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline:
            files, folders, size = cache_contents(cache)
            if files <= start_files and len(folders) <= len(start_folders):
                break
            time.sleep(0.5)
        left = sorted(str(path.relative_to(cache)) for path in files - start_files)
        assert not left, f"{len(left)} files left {SETTLE_SECONDS} s after the uploads: {left[:5]}"
        assert size <= start_bytes
        assert len(folders) <= len(start_folders), f"{len(folders) - len(start_folders)} folders"

        # Still serving.
        client = Client(url, verbose=False, download_files=False)
        assert client.predict(handle_file(paths[1]), 3, api_name="/caption")[0] == "a blue image"
    finally:
        demo.close()  # first, so that users still waiting get an error rather than hang
        pool.shutdown(wait=True, cancel_futures=True)
