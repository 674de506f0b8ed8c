"""`shared.serving.patient_local_check`: a page that is slow to answer its own launch check (a
busy 2-core machine) is waited for, instead of Gradio giving up after one slow request."""

from __future__ import annotations

from gradio import networking

from shared import serving


def test_the_check_is_repeated_until_the_page_answers(monkeypatch):
    answers = iter([False, False, True])
    calls = []

    def slow_then_up(url):
        calls.append(url)
        return next(answers)

    monkeypatch.setattr(networking, "url_ok", slow_then_up)
    with serving.patient_local_check(seconds=60):
        assert networking.url_ok("http://127.0.0.1:1/") is True
    assert len(calls) == 3
    assert networking.url_ok is slow_then_up  # Gradio's own check is back after the launch


def test_a_page_that_never_answers_still_fails_after_the_wait(monkeypatch):
    calls = []
    monkeypatch.setattr(networking, "url_ok", lambda url: calls.append(url) or False)
    with serving.patient_local_check(seconds=0):
        assert networking.url_ok("http://127.0.0.1:1/") is False
    assert len(calls) == 1
