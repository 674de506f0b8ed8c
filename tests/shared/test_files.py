"""Tests for shared/files.py: a write replaces the whole file or nothing, and survives a crash."""

import os
import stat
import sys
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from shared import files


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def fd_path(descriptor: int) -> str:
    return os.readlink(f"/proc/self/fd/{descriptor}")


needs_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="names open files through /proc/self/fd"
)


def test_write_text_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "settings.json"
    files.write_text(target, "first")
    files.write_text(target, '{"note": "你好"}')
    assert target.read_bytes() == '{"note": "你好"}'.encode()
    files.write_bytes(tmp_path / "blob.bin", b"\x00\xff")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\xff"
    assert names(tmp_path) == ["blob.bin", "settings.json"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "model.keras"
    target.write_bytes(b"the previous best model")
    with pytest.raises(type(error)), files.atomic_path(target) as temporary:
        temporary.write_bytes(b"half of a new")
        raise error
    assert target.read_bytes() == b"the previous best model"
    assert names(tmp_path) == ["model.keras"]


def test_the_temporary_keeps_the_target_name_so_keras_suffix_checks_pass(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    weights, whole = tmp_path / "trained.weights.h5", tmp_path / "model.keras"
    with files.atomic_path(weights) as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".")
        model.save_weights(temporary)  # raises unless the name ends with `.weights.h5`
    with files.atomic_path(whole) as temporary:
        model.save(temporary)  # raises unless the name ends with `.keras`
    assert names(tmp_path) == ["model.keras", "trained.weights.h5"]

    x = np.ones((1, 3), "float32")
    copy = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    copy.load_weights(weights)
    np.testing.assert_allclose(copy(x), model(x))
    np.testing.assert_allclose(keras.saving.load_model(whole)(x), model(x))


def test_two_writers_of_one_target_at_once_use_different_temporaries(tmp_path):
    """Both temporaries exist at the same time; a shared fixed name would mix the two files."""
    target = tmp_path / "vocabulary.json"
    both_open = threading.Barrier(2, timeout=30)
    temporaries, errors = {}, []

    def write(text):
        try:
            with files.atomic_path(target) as temporary:
                temporary.write_text(text * 1000)
                temporaries[text] = temporary
                both_open.wait()  # neither renames before the other has written its file
                assert temporary.read_text() == text * 1000
        except BaseException as error:  # reported below: a thread's exception is otherwise lost
            errors.append(error)

    threads = [threading.Thread(target=write, args=(text,)) for text in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert temporaries["a"] != temporaries["b"]
    assert target.read_text() in ("a" * 1000, "b" * 1000)
    assert names(tmp_path) == ["vocabulary.json"]


@needs_proc
def test_the_file_is_fsynced_before_the_rename_and_the_folder_after_it(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", fd_path(descriptor)))
        real_fsync(descriptor)

    def replace(source, destination):
        events.append(("replace", str(source), str(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "config.json"
    files.write_text(target, "{}")

    (replaced,) = [e for e in events if e[0] == "replace"]
    temporary = replaced[1]
    assert replaced[2] == str(target)
    assert events.index(("fsync", temporary)) < events.index(replaced)
    assert events.index(replaced) < events.index(("fsync", str(tmp_path)))


def test_permissions_are_those_of_a_plain_write_not_mkstemps_0600(tmp_path):
    plain, atomic = tmp_path / "plain.json", tmp_path / "atomic.json"
    plain.write_text("{}")
    files.write_text(atomic, "{}")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)

    os.chmod(atomic, 0o640)
    files.write_text(atomic, "[]")
    assert stat.S_IMODE(atomic.stat().st_mode) == 0o640
