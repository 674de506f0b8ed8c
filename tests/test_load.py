"""Both demos under load: 8 concurrent gradio_client users, valid and invalid requests mixed.

Why: a demo that answers one careful user may still fall over when several people use it at
once, or when some of them send broken pictures and empty messages between good ones. Both apps
are launched as `make demo` launches them (`shared.serving.launch`, default host) with the
fake models of tests/captioner/test_app.py and tests/chatbot/test_app.py, whose answers are
known. Then `CLIENTS` threads, each with its own clients, send `REQUESTS` requests in all, and:

- every valid request gets the right answer, every invalid one a clear error (or, for an empty
  message, no new turn, which is what the chat page promises);
- at no time does an app run more requests at once than `serving.CONCURRENCY_LIMIT`;
- both apps still answer afterwards, and nothing hangs (`TOTAL_TIMEOUT` bounds the whole run).

Also checked: the apps listen on 127.0.0.1 only, and an upload over `serving.MAX_FILE_SIZE` is
refused.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from captioner import app as caption_app
from chatbot import app as chat_app
from shared import serving
from shared.text import UNK
from tests.captioner.test_app import free_port, write_fake_captioner
from tests.chatbot.test_app import FAKE_SOURCE_LENGTH, GREEDY, texts, write_fake_chatbot
from tests.fixtures_bad_input import HUGE_TEXT, image_cases

pytestmark = pytest.mark.slow

CLIENTS = 8
REQUESTS = 208  # 26 per client
TOTAL_TIMEOUT = 600  # seconds for the whole load run: a hang guard, not a speed claim
COLOURS = {"red": (220, 30, 30), "green": (20, 200, 30), "blue": (20, 30, 200)}


@dataclass
class Busy:
    """Counts the calls of one app's model function that run at the same time."""

    now: int = 0
    most: int = 0
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(self, function):
        def counted(*args, **kwargs):
            with self.lock:
                self.now += 1
                self.calls += 1
                self.most = max(self.most, self.now)
            try:
                return function(*args, **kwargs)
            finally:
                with self.lock:
                    self.now -= 1

        return counted


@dataclass
class Served:
    caption_url: str
    chat_url: str
    caption_busy: Busy
    chat_busy: Busy
    port: int
    files: dict[str, Path]  # fixed files by name
    uploads: Path  # where per-request pictures are written


def write_files(directory: Path) -> dict[str, Path]:
    """A picture the fake captioner calls "a red image", broken ones, and one over the limit."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "red.png": Image.new("RGB", (64, 48), COLOURS["red"]),
    }
    paths = {}
    for name, picture in files.items():
        paths[name] = directory / name
        picture.save(paths[name])
    for name in ("zero_bytes", "text_named_jpg", "truncated_png"):
        case = image_cases()[name]
        paths[case.file_name] = directory / case.file_name
        paths[case.file_name].write_bytes(case.data)
    paths["oversized.png"] = directory / "oversized.png"
    paths["oversized.png"].write_bytes(os.urandom(11 * 1024 * 1024))  # over the 10 MB limit
    return paths


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    write_fake_captioner(runs / "captioner")
    write_fake_chatbot(runs / "chatbot")
    caption_busy, chat_busy = Busy(), Busy()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        patch.setattr(caption_app, "run_caption", caption_busy.wrap(caption_app.run_caption))
        patch.setattr(chat_app, "run_reply", chat_busy.wrap(chat_app.run_reply))
        demos = [caption_app.build_app(runs / "captioner"), chat_app.build_app(runs / "chatbot")]
        try:
            caption_port, chat_port = free_port(), free_port()
            _, caption_url, _ = serving.launch(
                demos[0], port=caption_port, prevent_thread_lock=True, quiet=True
            )
            _, chat_url, _ = serving.launch(
                demos[1], port=chat_port, prevent_thread_lock=True, quiet=True
            )
            files = write_files(tmp_path_factory.mktemp("files"))
            uploads = tmp_path_factory.mktemp("uploads")
            yield Served(
                caption_url, chat_url, caption_busy, chat_busy, caption_port, files, uploads
            )
        finally:
            for demo in demos:
                demo.close()


# ----------------------------------------------------------------------------------------------
# One request of each kind: what is sent, and a check of what came back


def reversed_words(message: str) -> str:
    """What the fake chatbot answers: the first words of the (cut) message, reversed, with
    words that are not plain a-z shown as [UNK]."""
    words = message.strip()[: chat_app.MAX_MESSAGE_CHARS].lower().split()[:FAKE_SOURCE_LENGTH]
    return " ".join(word if re.fullmatch("[a-z]+", word) else UNK for word in reversed(words))


def tag(number: int) -> str:
    """A word of letters a-z for `number` ("ba", "bb", ...): marks each chat request apart."""
    letters = ""
    while True:
        number, digit = divmod(number, 26)
        letters = "abcdefghijklmnopqrstuvwxyz"[digit] + letters
        if not number:
            return "b" + letters


def picture_for(directory: Path, colour: str, file_format: str, number: int) -> Path:
    """A `colour` picture with one pixel changed by `number`, so no two requests are the same.

    Identical answers written at the same moment hit a race in Gradio's output cache (see
    `test_identical_requests_at_the_same_time_all_get_their_pictures`).
    """
    picture = Image.new("RGB", (64, 48), COLOURS[colour])
    picture.putpixel((number % 64, number // 64 % 48), (number % 256, 128, 255 - number % 256))
    path = directory / f"{colour}-{number}.{file_format}"
    picture.save(path)
    return path


def caption_ok(colour: str, file_format: str):
    def request(clients, served, number):
        picture = picture_for(served.uploads, colour, file_format, number)
        answer = clients["caption"].predict(handle_file(picture), 3, api_name="/caption")
        assert answer[0] == f"a {colour} image", answer[0]
        assert [panel["caption"] for panel in answer[2]] == ["a", colour, "image"]

    return request


def caption_refused(picture: str):
    def request(clients, served, number):
        with pytest.raises(AppError, match=picture.replace(".", r"\.")):
            clients["caption"].predict(handle_file(served.files[picture]), 1, api_name="/caption")

    return request


def chat_ok(message: str):
    def request(clients, served, number):
        message_n = f"{tag(number)} {message}"
        box, history, _, _ = clients["chat"].predict(message_n, [], *GREEDY, api_name="/chat")
        assert box == ""
        assert texts(history) == [
            ("user", message_n.strip()[: chat_app.MAX_MESSAGE_CHARS]),
            ("assistant", reversed_words(message_n)),
        ]

    return request


def chat_ignored(message: str):
    def request(clients, served, number):
        box, history, _, _ = clients["chat"].predict(message, [], *GREEDY, api_name="/chat")
        assert (box, history) == ("", []), "an empty message must not start a turn"

    return request


def chat_refused(settings: tuple, complaint: str):
    def request(clients, served, number):
        with pytest.raises(AppError, match=complaint):
            clients["chat"].predict("hello there", [], *settings, api_name="/chat")

    return request


REQUEST_KINDS = {  # name -> (valid?, request)
    "caption red png": (True, caption_ok("red", "png")),
    "caption blue jpeg": (True, caption_ok("blue", "jpg")),
    "caption green gif": (True, caption_ok("green", "gif")),
    "caption zero-byte file": (False, caption_refused("empty.png")),
    "caption text named .jpg": (False, caption_refused("notes.jpg")),
    "caption truncated png": (False, caption_refused("cut.png")),
    "chat hello": (True, chat_ok("Hello there world")),
    "chat arabic": (True, chat_ok("مرحبا كيف حالك")),
    "chat 100,000 characters": (True, chat_ok(HUGE_TEXT)),
    "chat empty": (False, chat_ignored("")),
    "chat spaces only": (False, chat_ignored("  \n\t ")),
    "chat unknown mode": (False, chat_refused(("shouting", 4, 0.8, 0, 0.9, -1), "shouting")),
    "chat beam too wide": (
        False,
        chat_refused(("beam search", 999, 0.8, 0, 0.9, -1), "greater than maximum value 8"),
    ),
}


def run_client(served: Served, requests: list[tuple[int, str]], kinds: dict) -> dict:
    """One user: its own two clients, `(number, kind)` requests in order; failures by kind."""
    clients = {
        "caption": Client(served.caption_url, verbose=False),
        "chat": Client(served.chat_url, verbose=False),
    }
    failures: dict[str, list[str]] = {}
    for number, kind in requests:
        try:
            kinds[kind][1](clients, served, number)
        except Exception as error:  # collected, so one failure does not hide the others
            failures.setdefault(kind, []).append(f"{type(error).__name__}: {error}"[:300])
    return failures


def run_users(served: Served, schedule: list[str], kinds: dict = REQUEST_KINDS) -> dict:
    """`CLIENTS` users share `schedule` (names in `kinds`) round-robin; failures by kind."""
    numbered = list(enumerate(schedule))
    per_client = [numbered[i::CLIENTS] for i in range(CLIENTS)]
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(run_client, served, requests, kinds) for requests in per_client]
        done, pending = concurrent.futures.wait(futures, timeout=TOTAL_TIMEOUT)
        assert not pending, f"{len(pending)} clients still waiting after {TOTAL_TIMEOUT} s"
    failures: dict[str, list[str]] = {}
    for future in done:
        for kind, problems in future.result().items():
            failures.setdefault(kind, []).extend(problems)
    return failures


def test_eight_clients_with_mixed_requests_all_get_the_right_answer(served):
    names = sorted(REQUEST_KINDS)
    schedule = [names[i % len(names)] for i in range(REQUESTS)]
    assert len(schedule) >= 200
    valid = sum(REQUEST_KINDS[kind][0] for kind in schedule)
    assert 0 < valid < len(schedule), "the mix holds valid and invalid requests"
    failures = run_users(served, schedule)
    assert not failures, failures

    # Every request that reached a model ran within the apps' concurrency limit.
    for busy in (served.caption_busy, served.chat_busy):
        assert busy.calls > 0
        assert busy.most <= serving.CONCURRENCY_LIMIT, busy.most

    # Still serving afterwards.
    after = {
        "caption": Client(served.caption_url, verbose=False),
        "chat": Client(served.chat_url, verbose=False),
    }
    caption_ok("red", "png")(after, served, REQUESTS)
    chat_ok("good morning")(after, served, REQUESTS)


class GradioCacheRace(Exception):
    """Requests failed with the known race's symptom, and nothing else failed."""


# What a client sees when the race empties a picture under it (the server logs h11's "Too
# little data for declared Content-Length").
RACE_SYMPTOM = re.compile(
    r"RemoteProtocolError: peer closed connection without sending complete message body"
)


@pytest.mark.xfail(
    raises=GradioCacheRace,  # any other failure fails the test
    strict=False,  # a race: it shows on most runs, not all, so it cannot be strict
    reason="known bug (race): Gradio writes output pictures into its cache under a name made "
    "from their content, in place (gradio.processing_utils.save_pil_to_cache); a second "
    "identical answer rewrites the file while the first is being downloaded, which then "
    "arrives empty (RemoteProtocolError / 'Too little data for declared Content-Length')",
)
def test_identical_requests_at_the_same_time_all_get_their_pictures(served):
    def same_picture(clients, served, number):
        answer = clients["caption"].predict(
            handle_file(served.files["red.png"]), 3, api_name="/caption"
        )
        assert answer[0] == "a red image"

    failures = run_users(served, ["same"] * 64, {"same": (True, same_picture)})
    problems = [problem for kind in failures.values() for problem in kind]
    unexplained = [problem for problem in problems if not RACE_SYMPTOM.match(problem)]
    assert not unexplained, unexplained
    if problems:
        raise GradioCacheRace(f"{len(problems)} of 64 requests: {problems[0]}")


def test_apps_listen_on_127_0_0_1_only(served):
    parser = argparse.ArgumentParser()
    serving.add_launch_arguments(parser)
    assert parser.parse_args([]).host == "127.0.0.1"
    assert served.caption_url.startswith("http://127.0.0.1:")
    listening = [
        connection.laddr
        for connection in psutil.Process().net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == served.port
    ]
    assert listening and all(address.ip == "127.0.0.1" for address in listening), listening


def test_an_upload_over_the_size_limit_is_refused_by_the_server(served):
    """Posted straight to the upload route: gradio_client would refuse it before sending."""
    client = Client(served.caption_url, verbose=False)
    with open(served.files["oversized.png"], "rb") as upload:
        response = httpx.post(client.upload_url, files=[("files", ("oversized.png", upload))])
    assert response.status_code == 413
    assert "maximum allowed size" in response.text
    caption_ok("red", "png")({"caption": client}, served, REQUESTS + 1)
