"""Tests for shared/serving.py: what keeps a demo safe on a public address for weeks.

A password when asked for (and always for `--share`), Gradio's traffic summary off unless
`--monitoring`, `delete_cache` set on every page the commands launch, and a page without a
usable model that says how to make one but shows no server path or exception text (both demos).
Servers are real (127.0.0.1, free port) and called over HTTP or through gradio_client; the
captioner page serves the fake export of tests/captioner/test_app.py. How the cache stays
bounded under many uploads is tests/test_cache_cleanup.py.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import threading
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from captioner import app as caption_app
from chatbot import app as chat_app
from shared import serving
from tests.captioner.test_app import bright_square_picture, write_fake_captioner
from tests.chatbot.test_app import GREEDY
from tests.demo_helpers import page_client, serve, shown
from training import demo as demo_command

USER, PASSWORD = "ada", "analytical:engine"  # a colon in a password is allowed


@pytest.fixture(autouse=True)
def quiet_gradio(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-cache"))  # never the shared one


@pytest.fixture(scope="module")
def captioner_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "captioner"
    write_fake_captioner(run_dir)
    return run_dir


def parse(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser()
    serving.add_launch_arguments(parser)
    return parser, parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Flags


def test_share_without_a_password_is_refused_before_anything_starts(monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("got past the flag check")

    monkeypatch.setattr(serving, "serve_forever", must_not_run)
    monkeypatch.setattr(caption_app, "build_app", must_not_run)
    monkeypatch.setattr(chat_app, "build_app", must_not_run)
    monkeypatch.setattr(demo_command, "models_to_train", must_not_run)
    for main in (caption_app.main, chat_app.main, demo_command.main):
        with pytest.raises(SystemExit) as exit_info:
            main(["--share", "true"])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert "--share true puts the demo on a public address" in error
        assert "--auth-file PATH" in error and "--auth USER:PASSWORD" in error


def test_share_with_a_password_and_the_defaults(capsys):
    settings = serving.prepare_launch(*parse(["--share", "true", "--auth", f"{USER}:{PASSWORD}"]))
    assert settings.share and settings.auth == [(USER, PASSWORD)]
    assert not settings.monitoring
    assert settings.delete_cache == serving.DELETE_CACHE == (600, 3600)
    assert capsys.readouterr().err == ""

    settings = serving.prepare_launch(*parse(["--monitoring", "--cache-minutes", "5"]))
    assert settings.monitoring and settings.auth is None
    assert settings.delete_cache == (300, 300)
    with pytest.raises(SystemExit):
        parse(["--cache-minutes", "0"])
    with pytest.raises(SystemExit):
        parse(["--auth", "nopassword"])


def test_auth_file_lines_comments_and_mistakes(tmp_path, capsys):
    good = tmp_path / "users"
    good.write_text(f"# who may use the demo\n\n{USER}:{PASSWORD}\n  grace:hopper\n")
    good.chmod(0o600)
    settings = serving.prepare_launch(*parse(["--share", "true", "--auth-file", str(good)]))
    assert settings.auth == [(USER, PASSWORD), ("grace", "hopper")]
    assert capsys.readouterr().err == ""

    good.chmod(0o644)
    serving.prepare_launch(*parse(["--auth-file", str(good)]))
    assert f"other users of this machine can read {good}" in capsys.readouterr().err

    bad = tmp_path / "bad"
    bad.write_text(f"{USER}:{PASSWORD}\nsecret-without-user-name\n")
    bad.chmod(0o600)
    with pytest.raises(SystemExit):
        serving.prepare_launch(*parse(["--auth-file", str(bad)]))
    error = capsys.readouterr().err
    assert f"{bad}, line 2: expected user:password" in error
    assert "secret-without-user-name" not in error  # a password is never printed

    with pytest.raises(SystemExit):
        serving.prepare_launch(*parse(["--auth-file", str(tmp_path / "missing")]))
    assert "cannot read the auth file" in capsys.readouterr().err


def test_a_host_open_to_the_network_without_a_password_is_warned_about(capsys):
    serving.prepare_launch(*parse(["--host", "0.0.0.0"]))
    assert "--host 0.0.0.0 lets anyone who can reach this machine use the demo" in (
        capsys.readouterr().err
    )
    for host in ("127.0.0.1", "localhost", "::1"):
        serving.prepare_launch(*parse(["--host", host]))
        assert capsys.readouterr().err == ""
    serving.prepare_launch(*parse(["--host", "0.0.0.0", "--auth", "a:b"]))
    assert capsys.readouterr().err == ""


def test_the_cache_folder_is_private_to_the_process(monkeypatch):
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    cleanups = []
    monkeypatch.setattr(serving.atexit, "register", lambda *args, **kw: cleanups.append((args, kw)))
    folder = serving.use_private_cache_dir()
    try:
        assert os.environ["GRADIO_TEMP_DIR"] == str(folder)
        assert folder.name.startswith(serving.CACHE_DIR_PREFIX)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert serving.use_private_cache_dir() == folder  # once per process
        (folder / "upload.png").write_bytes(b"x")
        [((function, *arguments), keywords)] = cleanups
        function(*arguments, **keywords)  # what runs at exit
        assert not folder.exists()
    finally:
        if folder.exists():
            folder.rmdir()


# ----------------------------------------------------------------------------------------------
# Pages and servers


def test_every_page_deletes_its_cached_files(tmp_path):
    runs = tmp_path / "runs"  # no exports: the pages build without loading a model
    for build in (caption_app.build_app, chat_app.build_app):
        assert build(runs / "none").delete_cache == serving.DELETE_CACHE
        assert build(runs / "none", (2, 3)).delete_cache == (2, 3)
    assert demo_command.build_demo(runs, (4, 5)).delete_cache == (4, 5)  # as `main` calls it


def test_a_password_protects_the_page_and_the_uploads(captioner_run, tmp_path):
    users = tmp_path / "users"
    users.write_text(f"{USER}:{PASSWORD}\n")
    users.chmod(0o600)
    settings = serving.prepare_launch(*parse(["--auth-file", str(users)]))
    demo = caption_app.build_app(captioner_run, settings.delete_cache)
    try:
        url = serve(demo, auth=settings.auth)
        assert httpx.get(f"{url}config").status_code == 401
        picture = bright_square_picture(tmp_path / "picture.png")
        with open(picture, "rb") as upload:
            refused = httpx.post(f"{url}gradio_api/upload", files=[("files", upload)])
        assert refused.status_code == 401
        wrong = httpx.post(f"{url}login", data={"username": USER, "password": "babbage"})
        assert wrong.status_code == 400

        client = Client(url, auth=(USER, PASSWORD), verbose=False, download_files=False)
        caption, _, _ = client.predict(handle_file(picture), 1, api_name="/caption")
        assert caption == "a blue image"
    finally:
        demo.close()


@pytest.mark.parametrize("monitoring", [False, True])
def test_monitoring_is_served_only_when_asked_for(tmp_path, monitoring):
    demo = caption_app.build_app(tmp_path / "no-model")
    try:
        url = serve(demo, **({"monitoring": True} if monitoring else {}))  # off by default
        summary = httpx.get(f"{url}monitoring/summary")
        login = httpx.get(f"{url}monitoring")
    finally:
        demo.close()
    if monitoring:
        assert summary.status_code == 200 and isinstance(summary.json(), dict)
        assert login.status_code == 200
    else:
        assert summary.status_code == 403 and "not enabled" in summary.text
        assert login.status_code == 403


# ----------------------------------------------------------------------------------------------
# Pages without a usable model


def ask_for_caption(client: Client, folder: Path):
    return client.predict(
        handle_file(bright_square_picture(folder / "p.png")), 3, api_name="/caption"
    )


def ask_for_reply(client: Client, folder: Path):
    return client.predict("hello", [], *GREEDY, api_name="/chat")


# Each demo: its page builder, the command that trains its model, and a request to its page.
DEMOS = {
    "captioner": (caption_app.build_app, "training.train_captioner", ask_for_caption),
    "chatbot": (chat_app.build_app, "training.train_chatbot", ask_for_reply),
}


@pytest.fixture
def folder(tmp_path_factory) -> Path:
    """Where a page-without-model test keeps its run: not `tmp_path`, which holds Gradio's cache
    folder here (`quiet_gradio`), and the page names its cached example pictures by path."""
    return tmp_path_factory.mktemp("server")


def page_without_model(name: str, run_dir: Path, folder: Path) -> tuple[dict, str, list[str]]:
    """Serves demo `name`'s page for `run_dir` (which has no usable model) and sends it a
    request: -> (the page's config, the error the request got, the page's `problem` notices)."""
    build_app, _, ask = DEMOS[name]
    with page_client(build_app, run_dir) as client:
        with pytest.raises(AppError) as refused:
            ask(client, folder)
        page_config = client.config
    return page_config, str(refused.value), shown(page_config, "problem")


@pytest.mark.parametrize("name", DEMOS)
def test_no_export_page_says_how_to_train(name, folder, capsys):
    train_module = DEMOS[name][1]
    run_dir = folder / "runs" / name
    page_config, error, notices = page_without_model(name, run_dir, folder)
    assert len(notices) == 1
    assert f"No trained {name} model yet" in notices[0]
    assert "`make demo`" in notices[0] and f"`python -m {train_module}`" in notices[0]
    assert f"No trained {name} model yet" in error
    assert str(folder) not in json.dumps(page_config) + error  # no server path on the page
    log = capsys.readouterr().out  # the operator's console names the folder
    assert f"No trained {name} model was found in {run_dir / 'export' / name}/" in log
    assert f"python -m {train_module} --run-dir {run_dir}" in log


@pytest.mark.parametrize("name", DEMOS)
def test_broken_export_page_shows_no_path_or_exception_text(name, folder, capsys):
    train_module = DEMOS[name][1]
    run_dir = folder / "runs" / name
    version_dir = run_dir / "export" / name / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"")  # looks complete, cannot be loaded
    with pytest.raises(ValueError) as load_error:
        serving.load_export(version_dir)
    detail = str(load_error.value)[:60]

    page_config, error, notices = page_without_model(name, run_dir, folder)
    assert len(notices) == 1
    assert f"The trained {name} model could not be loaded" in notices[0]
    assert f"python -m {train_module} --overwrite" in notices[0]
    assert "could not be loaded" in error
    page = json.dumps(page_config) + error
    assert str(folder) not in page and detail not in page and "ValueError" not in page
    log = capsys.readouterr().out
    assert f"The model in {version_dir} could not be loaded (ValueError: {detail}" in log
    assert f"--run-dir {run_dir} --overwrite" in log


def test_find_endpoint_falls_back_on_signatures_and_names_what_is_missing():
    class SignaturesOnly:  # a SavedModel whose functions were exported only as signatures
        signatures = {"reply": "the reply signature"}

    assert serving.find_endpoint(SignaturesOnly(), "reply", "chatbot") == "the reply signature"
    with pytest.raises(ValueError, match="no `caption` endpoint; is it a captioner export"):
        serving.find_endpoint(SignaturesOnly(), "caption", "captioner")


def test_the_model_is_warmed_up_in_the_background_and_a_failed_warm_up_is_only_printed(
    chatbot_export, capsys
):
    seen = []

    def warm_up(model):
        seen.append(model)
        chat_app.warm_up(model)  # the chatbot page's own warm-up: greedy replies

    served = serving.open_export(
        chatbot_export.run_dir, "chatbot", chat_app.TRAIN_MODULE, "reply", warm_up=warm_up
    )
    assert served.problem is None
    threads = [t for t in threading.enumerate() if t.name == "warm-up-chatbot"]
    for thread in threads:
        thread.join(timeout=120)
    assert seen == [served.model]

    def broken(model):
        raise RuntimeError("no XLA here")

    thread = serving.start_warm_up(broken, served.model, "chatbot")
    # Not a daemon: a warm-up still compiling when the interpreter shuts down can crash it.
    assert not thread.daemon
    thread.join(timeout=10)
    assert (
        "chatbot: warming up the model failed: RuntimeError('no XLA here')"
        in capsys.readouterr().out
    )
