"""Bad pictures everywhere a picture enters Glimpse (issue 6).

Twelve files (see `tests.fixtures_bad_input.image_cases`) go through (a) the exported
captioner's `caption` endpoint loaded with `tf.saved_model.load`, (b) the captioner demo
served on 127.0.0.1 and called through gradio_client, and (c) the training data readers
`load_coco_json` and `load_flickr8k`. What a user may rely on: a readable picture, whatever its
format, gets a well-formed caption; an unreadable one gets a clear error (naming the file where
there is a file); the process goes on serving; and a small file that unpacks into a huge
picture (the 20000x20000 decompression bomb) never costs more than `MEMORY_GROWTH_LIMIT`.

The endpoint is the tiny trained export of tests/fixtures_bad_input.py. The demo serves the
fake captioner of tests/captioner/test_app.py (it names the dominant colour), so its answers
are known in advance. The bomb goes through the endpoint and the reader in a fresh process
with a memory cap, so a regression cannot take the machine down with it.
"""

from __future__ import annotations

import json
import resource
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from captioner import app
from captioner.data import load_coco_json, load_flickr8k
from tests.captioner.test_app import write_fake_captioner
from tests.demo_helpers import page_client
from tests.fixtures_bad_input import (
    BOMB_SIDE,
    IMAGE_CASE_NAMES,
    MEMORY_GROWTH_LIMIT,
    READABLE_CASE_NAMES,
    SMALL_IMAGE_CASE_NAMES,
    image_cases,
    is_utf8,
    write_image_cases,
)
from tests.training.helpers import REPO_ROOT, run_fresh_python

READABLE = READABLE_CASE_NAMES
UNREADABLE = tuple(name for name in SMALL_IMAGE_CASE_NAMES if name not in READABLE)
# What TensorFlow's decoders say about a file they cannot read: short, but it names the problem.
# TensorFlow's own words for a picture it cannot decode ("Invalid PNG. Failed to initialize
# decoder." for a bare PNG signature, which hypothesis found).
CLEAR_DECODE_ERROR = (
    r"(?i)input is empty|unknown image file format|invalid \w+ data|invalid (png|jpeg|gif|bmp)\b"
    r"|pixels"
)


def max_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture(scope="module")
def case_files(tmp_path_factory) -> dict[str, Path]:
    return write_image_cases(tmp_path_factory.mktemp("pictures"))


def check_well_formed_captions(outputs: dict, batch: int, max_length: int) -> None:
    """The `caption` endpoint's outputs have the promised shapes, types and UTF-8 strings."""
    regions = int(np.prod(outputs["grid_shape"].numpy()))
    assert outputs["caption"].shape == (batch,)
    assert all(is_utf8(caption) for caption in outputs["caption"].numpy())
    assert outputs["score"].dtype == tf.float32 and outputs["score"].shape == (batch,)
    assert np.all(np.isfinite(outputs["score"].numpy()))
    assert outputs["attention"].shape == (batch, max_length, regions)
    attention = outputs["attention"].numpy()
    assert np.all(attention >= 0) and np.all(attention <= 1 + 1e-5)
    assert outputs["tokens"].shape[0] == batch
    assert all(is_utf8(token) for token in outputs["tokens"].numpy().reshape(-1))
    assert outputs["length"].dtype == tf.int32
    assert np.all((outputs["length"].numpy() >= 0) & (outputs["length"].numpy() <= max_length))


def caption(model, pictures: list[bytes], beam_size: int = 1) -> dict:
    return model.caption(
        image_bytes=tf.constant(pictures, tf.string), beam_size=tf.constant(beam_size, tf.int32)
    )


# ----------------------------------------------------------------------------------------------
# (a) The exported `caption` endpoint


@pytest.mark.parametrize("name", SMALL_IMAGE_CASE_NAMES)
def test_endpoint_captions_or_refuses_clearly_and_serves_on(
    captioner_model, captioner_export, name
):
    case = image_cases()[name]
    max_length = captioner_export.config.max_length
    if case.readable:
        check_well_formed_captions(caption(captioner_model, [case.data], 3), 1, max_length)
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match=CLEAR_DECODE_ERROR):
            caption(captioner_model, [case.data])
    good = image_cases()["palette"].data
    check_well_formed_captions(caption(captioner_model, [good]), 1, max_length)


def test_endpoint_captions_a_batch_of_every_readable_format(captioner_model, captioner_export):
    pictures = [image_cases()[name].data for name in READABLE]
    outputs = caption(captioner_model, pictures)
    check_well_formed_captions(outputs, len(pictures), captioner_export.config.max_length)


def test_endpoint_refuses_a_batch_holding_one_broken_picture(captioner_model):
    pictures = [image_cases()["palette"].data, b"", image_cases()["rgba"].data]
    with pytest.raises(tf.errors.InvalidArgumentError, match=CLEAR_DECODE_ERROR):
        caption(captioner_model, pictures)


# The bomb runs in one fresh process, through the endpoint and then through the COCO reader.
# Its heap is capped `HEAP_HEADROOM` above what it holds once loaded, so a regression fails an
# allocation there instead of swapping the machine; the peak is reset between the two runs.
HEAP_HEADROOM = 3 << 30  # above MEMORY_GROWTH_LIMIT, so a regression fails that check
BOMB_PROCESS = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path

    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    sys.path.insert(0, request["repo_root"])
    import tensorflow as tf
    from captioner.data import load_coco_json


    def status(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/self/status")


    def reset_peak():
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current resident size


    model = tf.saved_model.load(request["export"])


    def endpoint(data):
        out = model.caption(image_bytes=tf.constant([data]), beam_size=tf.constant(1))
        return out["caption"].numpy()[0].decode("utf-8")


    def reader(data):
        folder = Path(request["folder"])
        (folder / "picture.png").write_bytes(data)
        dataset = load_coco_json(request["annotations"], folder, 64)
        return [list(element["image"].shape) for element in dataset]


    bomb = Path(request["bomb"]).read_bytes()
    good = Path(request["good"]).read_bytes()
    for run in (endpoint, reader):
        run(good)  # trace and warm up before measuring
    limit = status("VmData") + request["headroom"]
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    results = {}
    for run in (endpoint, reader):
        reset_peak()
        before = status("VmHWM")
        result = results[run.__name__] = {}
        try:
            run(bomb)
            result["outcome"] = "answered"
        except Exception as error:
            result["outcome"] = type(error).__name__
            result["message"] = str(error)
        result["growth"] = status("VmHWM") - before
        result["after"] = str(run(good))
    Path(sys.argv[2]).write_text(json.dumps(results), encoding="utf-8")
    """
)


@pytest.fixture(scope="module")
def bomb_results(captioner_export, tmp_path_factory) -> dict:
    """What the memory-capped process saw when the bomb went through the endpoint and reader."""
    directory = tmp_path_factory.mktemp("bomb")
    cases = image_cases()
    (directory / "bomb.png").write_bytes(cases["bomb_20000px"].data)
    (directory / "good.png").write_bytes(cases["palette"].data)
    (directory / "images").mkdir()
    write_coco(directory / "captions.json", ["picture.png"])
    request = {
        "repo_root": str(REPO_ROOT),
        "export": str(captioner_export.version_dir),
        "bomb": str(directory / "bomb.png"),
        "good": str(directory / "good.png"),
        "folder": str(directory / "images"),
        "annotations": str(directory / "captions.json"),
        "headroom": HEAP_HEADROOM,
    }
    return run_fresh_python(BOMB_PROCESS, request, directory / "process")


def check_bomb_refused(result: dict, expected_errors: tuple[str, ...], clue: str) -> None:
    """A clear error mentioning `clue`, bounded memory, and the next picture still works."""
    assert result["after"], "the next good picture got no answer"
    assert result["growth"] < MEMORY_GROWTH_LIMIT, f"peak memory grew {result['growth']:,} bytes"
    assert result["outcome"] in expected_errors, result
    assert clue in result["message"], result


@pytest.mark.slow
def test_endpoint_refuses_a_decompression_bomb_in_bounded_memory(bomb_results):
    check_bomb_refused(bomb_results["endpoint"], ("InvalidArgumentError",), "pixels")


# ----------------------------------------------------------------------------------------------
# (b) The captioner demo, through gradio_client


@pytest.fixture(scope="module")
def demo_client(tmp_path_factory):
    """The demo serving the fake captioner of tests/captioner/test_app.py ("a red image")."""
    run_dir = tmp_path_factory.mktemp("runs") / "captioner"
    with page_client(app.build_app, run_dir, write_fake_captioner) as client:
        yield client


def check_demo_answer(answer, expected_caption: str) -> None:
    """(caption, score, panels): the expected caption and one attention picture per word."""
    text, score, panels = answer
    assert text == expected_caption
    assert np.isfinite(score)
    assert [panel["caption"] for panel in panels] == text.split()
    assert all(Path(panel["image"]).stat().st_size > 0 for panel in panels)


@pytest.mark.parametrize("name", IMAGE_CASE_NAMES)
def test_demo_captions_or_names_the_broken_file(demo_client, case_files, name):
    case = image_cases()[name]
    peak_before = max_rss_bytes()
    if case.readable:
        answer = demo_client.predict(handle_file(case_files[name]), 1, api_name="/caption")
        # Every readable case is red, or grey (a tie, which the fake calls red too).
        check_demo_answer(answer, "a red image")
    else:
        with pytest.raises(AppError, match=case.file_name.replace(".", r"\.")) as error:
            demo_client.predict(handle_file(case_files[name]), 1, api_name="/caption")
        assert "Traceback" not in str(error.value)
    assert max_rss_bytes() - peak_before < MEMORY_GROWTH_LIMIT
    good = handle_file(case_files["palette"])
    check_demo_answer(demo_client.predict(good, 1, api_name="/caption"), "a red image")


def test_demo_refuses_the_bomb_by_its_size(demo_client, case_files):
    too_large = rf"bomb\.png has ({BOMB_SIDE}x{BOMB_SIDE} pixels|more than the 25 million)"
    with pytest.raises(AppError, match=too_large):
        demo_client.predict(handle_file(case_files["bomb_20000px"]), 1, api_name="/caption")


# ----------------------------------------------------------------------------------------------
# (c) The training data readers


def write_coco(path: Path, file_names: list[str]) -> Path:
    """A COCO captions file naming `file_names`, one caption each."""
    content = {
        "images": [{"id": i, "file_name": name} for i, name in enumerate(file_names)],
        "annotations": [
            {"image_id": i, "caption": f"picture number {i}"} for i in range(len(file_names))
        ],
    }
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def write_flickr(path: Path, file_names: list[str]) -> Path:
    """A Flickr8k token file naming `file_names`, one caption each."""
    lines = [f"{name}#0\tpicture number {i}" for i, name in enumerate(file_names)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


READERS = {
    "coco": (write_coco, "captions.json", load_coco_json),
    "flickr8k": (write_flickr, "Flickr8k.token.txt", load_flickr8k),
}


def read_all(reader: str, directory: Path, file_names: list[str]) -> list[dict]:
    """Every element `reader` yields for `file_names` in `directory`, as NumPy."""
    write, annotation_name, load = READERS[reader]
    annotations = write(directory.parent / annotation_name, file_names)
    dataset = load(annotations, directory, 32)
    return list(dataset.as_numpy_iterator())


@pytest.mark.parametrize("reader", sorted(READERS))
def test_readers_decode_every_readable_format_to_rgb(reader, case_files):
    directory = case_files["palette"].parent
    names = [image_cases()[name].file_name for name in READABLE]
    elements = read_all(reader, directory, names)
    images = {name: element["image"] for name, element in zip(READABLE, elements)}
    assert len(images) == len(READABLE)
    for name, image in images.items():
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8, name
    for name in ("one_pixel", "cmyk_jpeg", "animated_gif", "palette"):  # red, first frame red
        red, green, blue = images[name].reshape(-1, 3).mean(axis=0)
        assert red > 180 and green < 60 and blue < 60, (name, red, green, blue)
    red, green, blue = images["rgba"].reshape(-1, 3).mean(axis=0)  # half-transparent on white
    assert red > 230 and 110 < green < 160 and 110 < blue < 160, (red, green, blue)
    np.testing.assert_allclose(images["png_16_bit"], round(50_000 / 257), atol=1)
    grey = images["greyscale"].astype(int)
    assert np.all(grey[..., 0] == grey[..., 1]) and np.all(grey[..., 1] == grey[..., 2])


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("name", UNREADABLE)
def test_readers_name_the_broken_picture(reader, name, case_files):
    directory = case_files["palette"].parent
    bad = image_cases()[name].file_name
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)) as error:
        read_all(reader, directory, ["indexed.png", bad, "grey.png"])
    assert bad in str(error.value)


@pytest.mark.slow
def test_reader_refuses_a_decompression_bomb_in_bounded_memory(bomb_results):
    check_bomb_refused(
        bomb_results["reader"], ("ValueError", "InvalidArgumentError"), "picture.png"
    )
