"""Tests for shared/serving.py: what keeps a demo safe on a public address for weeks.

A password when asked for (and always for `--share`), Gradio's traffic summary off unless
`--monitoring`, and `delete_cache` set on every page the commands launch. Servers are real
(127.0.0.1, free port) and called over HTTP or through gradio_client; the captioner page serves
the fake export of tests/captioner/test_app.py. How the cache stays bounded under many uploads
is tests/test_cache_cleanup.py.
"""

from __future__ import annotations

import argparse
import os
import stat

import httpx
import pytest
from gradio_client import Client, handle_file

from captioner import app as caption_app
from chatbot import app as chat_app
from shared import serving
from tests.captioner.test_app import bright_square_picture, free_port, write_fake_captioner
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


def launched(demo, **options) -> str:
    """Launches `demo` like the commands do, on a free local port; returns its URL."""
    _, url, _ = serving.launch(
        demo, port=free_port(), prevent_thread_lock=True, quiet=True, **options
    )
    return url


# ----------------------------------------------------------------------------------------------
# Flags


def test_share_without_a_password_is_refused_before_anything_starts(monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("got past the flag check")

    monkeypatch.setattr(serving, "serve_forever", must_not_run)
    monkeypatch.setattr(caption_app, "build_app", must_not_run)
    monkeypatch.setattr(chat_app, "build_app", must_not_run)
    monkeypatch.setattr(demo_command, "train_if_missing", must_not_run)
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
        url = launched(demo, auth=settings.auth)
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
        url = launched(demo, **({"monitoring": True} if monitoring else {}))  # off by default
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
