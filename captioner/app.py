"""The captioner web demo: upload a picture, read its caption, see where each word looked.

    python -m captioner.app [--run-dir runs/captioner] [--host 127.0.0.1] [--port 7860]

Why this module exists: a caption alone does not show whether the model looked at the right
thing. The page shows, for each generated word, the picture tinted red where that word's
attention was strongest.

The demo serves the newest SavedModel in `<run-dir>/export/captioner/` (a newer one as soon as
it appears, and the run's training progress until the first does) through its `caption`
endpoint (encoded image bytes in; caption, score, per-word attention over the regions out), so
it runs any exported captioner and imports no model code. The model gets the uploaded file's
own bytes when TensorFlow can decode them, else the picture re-encoded as PNG.
"""

from __future__ import annotations

import atexit
import io
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.shapes import generate_scenes
from shared import serving, training_panel
from shared.plots import overlay_attention

EXPORT_NAME = "captioner"
ENDPOINT = "caption"
TRAIN_MODULE = "training.train_captioner"
DEFAULT_RUN_DIR = "runs/captioner"
SEARCH_CHOICES = [("greedy", 1), ("beam search, 3 beams", 3), ("beam search, 5 beams", 5)]
DEFAULT_BEAM_SIZE = 3
DEFAULT_IMAGE_SIZE = 64  # of the example pictures, when the export does not say
# Sent to the model as uploaded. Not GIF: TensorFlow decodes every frame of a GIF, each at its
# own declared size, so a GIF is always re-encoded from the first frame Pillow read.
TF_DECODABLE_FORMATS = frozenset({"PNG", "JPEG", "BMP", "WEBP"})
# The only Pillow readers an upload reaches: plain raster formats. Others (EPS runs Ghostscript,
# PSD, PDF, SVG, ...) are refused before any plugin looks at the file.
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
EXIF_ORIENTATION = 0x0112  # a camera's "turn me upright" tag, which TensorFlow ignores
UPLOAD_HINT = "upload a PNG, JPEG, GIF, BMP, WebP or TIFF picture."
MAX_PIXELS = 25_000_000  # a small file can still unpack into a huge picture
DISPLAY_SIDE = 320  # longest side, in pixels, of the attention panels
NUM_EXAMPLES = 4
EXAMPLE_SEED = 2024
# What each `--data` source is called on the page, by its kind (the part before the first ":").
DATA_NAMES = {
    "shapes": "the built-in shapes scenes",
    "coco": "COCO captions",
    "flickr8k": "Flickr8k",
    "tfds": "TFDS coco_captions",
}


@dataclass
class Upload:
    """An uploaded picture: the bytes the model reads and the picture the page shows."""

    model_bytes: bytes
    picture: np.ndarray  # uint8 (height, width, 3), upright, transparency flattened on white


@dataclass
class Caption:
    """One caption and where each of its words looked."""

    text: str
    score: float
    words: list[str]
    attention: np.ndarray  # float32 (len(words), regions)
    grid_shape: tuple[int, int]


def read_upload(path: str | Path, name: str) -> Upload:
    """Reads an uploaded file; ValueError naming `name` when it is not a readable picture."""
    data = Path(path).read_bytes()
    unreadable = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)
    try:
        image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)  # reads the header only
    except Image.DecompressionBombError:
        raise ValueError(
            f"{name} has more than the {MAX_PIXELS // 1_000_000} million pixels this demo "
            "accepts; upload a smaller picture."
        ) from None
    except unreadable as error:
        raise ValueError(
            f"{name} is not a picture that can be read, or not in a supported picture format; "
            f"{UPLOAD_HINT}"
        ) from error
    with image:
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(
                f"{name} has {image.width}x{image.height} pixels, more than the "
                f"{MAX_PIXELS // 1_000_000} million this demo accepts; upload a smaller picture."
            )
        try:
            image.load()
            file_format = image.format
            rotated = image.getexif().get(EXIF_ORIENTATION, 1) != 1
            rgba = ImageOps.exif_transpose(image).convert("RGBA")
        except unreadable as error:
            # Pillow's own text (file offsets, decoder names) goes to the log via the chained error.
            raise ValueError(f"{name} is damaged or incomplete; {UPLOAD_HINT}") from error
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    picture = Image.alpha_composite(white, rgba).convert("RGB")
    if file_format not in TF_DECODABLE_FORMATS or rotated:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        data = buffer.getvalue()
    return Upload(data, np.asarray(picture))


def warm_up(model) -> None:
    """Captions a blank picture with every search the page offers, so the search is compiled
    for each (`shared.compiled`) before a visitor uploads."""
    blank = io.BytesIO()
    Image.new("RGB", (8, 8)).save(blank, format="PNG")
    for _, beam_size in SEARCH_CHOICES:
        run_caption(model, blank.getvalue(), beam_size)


def run_caption(model, image_bytes: bytes, beam_size: int) -> Caption:
    """Calls the export's `caption` endpoint on one encoded picture."""
    import tensorflow as tf

    outputs = serving.find_endpoint(model, ENDPOINT, EXPORT_NAME)(
        image_bytes=tf.constant([image_bytes]), beam_size=tf.constant(beam_size, tf.int32)
    )
    words = [word for word in serving.as_text(outputs["tokens"][0]) if word]
    attention = outputs["attention"][0].numpy()[: len(words)]
    grid_height, grid_width = (int(v) for v in outputs["grid_shape"].numpy())
    return Caption(
        text=serving.as_text(outputs["caption"])[0],
        score=float(outputs["score"].numpy()[0]),
        words=words,
        attention=attention,
        grid_shape=(grid_height, grid_width),
    )


def image_size_of(metadata: dict) -> int:
    """The side of the pictures the export's model reads, from its metadata."""
    return int(metadata.get("image_size", DEFAULT_IMAGE_SIZE))


def trained_on(metadata: dict) -> str | None:
    """One line on what the export's model was trained on, or None when its metadata does not
    say; for the shapes data also what that means for a photo."""
    kind = str(metadata.get("data", "")).partition(":")[0]
    if kind not in DATA_NAMES:
        return None
    line = training_panel.trained_on_text(DATA_NAMES[kind], metadata, "images")
    if kind == "shapes":
        line += " It knows only coloured shapes, so it describes any photo in shapes."
    return line


def display_size(picture: np.ndarray) -> np.ndarray:
    """`picture` scaled so its longest side is `DISPLAY_SIDE` pixels (small pictures grow)."""
    height, width = picture.shape[:2]
    scale = DISPLAY_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BICUBIC))


def attention_panels(picture: np.ndarray, caption: Caption) -> list[tuple[np.ndarray, str]]:
    """One `(overlay, word)` panel per generated word: `picture` tinted where the word looked."""
    shown = display_size(picture)
    return [
        (overlay_attention(shown, weights, caption.grid_shape), word)
        for word, weights in zip(caption.words, caption.attention)
    ]


def example_images(image_size: int) -> list[str]:
    """Paths of a few generated shape pictures, written into a new private folder.

    The folder is made by `tempfile.mkdtemp`: a new, unguessable name, mode 0700, so no other
    user can plant, replace or redirect a file in it, and no file this call did not write is
    ever shown. Each file is created exclusively (never through an existing file or link). The
    folder is removed when the process exits.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"glimpse-examples-{image_size}px-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    scenes = generate_scenes(NUM_EXAMPLES, seed=EXAMPLE_SEED, image_size=image_size)
    paths = []
    for index, scene in enumerate(scenes):
        path = folder / f"example-{index}.png"
        with open(path, "xb") as file:  # O_CREAT | O_EXCL
            Image.fromarray(scene.image).save(file, format="PNG")
        paths.append(str(path))
    return paths


def build_app(
    run_dir: str | Path = DEFAULT_RUN_DIR,
    delete_cache: tuple[int, int] | None = serving.DELETE_CACHE,
    job: Callable[[], training_panel.Job | None] | None = None,
) -> gr.Blocks:
    """The captioner page for the newest export in `run_dir` (or a "no model" notice and the
    run's training, followed live).

    `delete_cache` is `(check every, delete after)` in seconds for uploads and attention panels;
    `job()` says what the demo knows of the process training this model (`make demo`).
    """
    live = serving.LiveExport(run_dir, EXPORT_NAME, TRAIN_MODULE, ENDPOINT, image_size_of, warm_up)
    kept = f" (uploads are kept {serving.duration_text(delete_cache[1])})" if delete_cache else ""

    def caption_upload(upload: dict | None, beam_size):
        """Payload of the image input (unprocessed: Gradio would choke on broken files)."""
        served = live.for_request()
        if served.model is None:
            raise gr.Error(served.problem.page)
        if not upload or not upload.get("path"):
            raise gr.Error("Upload a picture first, or click one of the examples.")
        if beam_size not in [value for _, value in SEARCH_CHOICES]:
            raise gr.Error(f"Unknown search setting {beam_size!r}; choose one of the options.")
        name = upload.get("orig_name") or Path(upload["path"]).name
        try:
            picture = read_upload(upload["path"], name)
            caption = run_caption(served.model, picture.model_bytes, int(beam_size))
        except FileNotFoundError as error:  # the upload was older than `delete_cache` allows
            raise gr.Error(f"{name} is no longer on the server{kept}; upload it again.") from error
        except ValueError as error:
            raise gr.Error(str(error)) from error
        except Exception as error:  # TensorFlow's decode errors and the like (Gradio logs them)
            raise gr.Error(
                f"The model could not caption {name}; try the picture saved as PNG or JPEG."
            ) from error
        return caption.text, round(caption.score, 4), attention_panels(picture.picture, caption)

    with gr.Blocks(title="Glimpse captioner", delete_cache=delete_cache) as demo:
        gr.Markdown(
            "## Glimpse: image captioner\n"
            "Upload a picture (or click an example) and press **Caption**. Each panel below "
            "shows one word of the caption, with the picture tinted red where the model "
            "looked while writing it."
        )
        training_panel.follow_run(live, trained_on, job, api_name="captioner_status")
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="filepath",
                    label="Picture",
                    sources=["upload", "clipboard"],
                    height=320,
                    elem_id="picture",
                )
                search = gr.Radio(
                    SEARCH_CHOICES, value=DEFAULT_BEAM_SIZE, label="Search", type="value"
                )
                button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                gr.Examples(
                    example_images(live.served.settings),
                    inputs=image,
                    label="Examples",
                    elem_id="examples",
                )
            with gr.Column():
                caption_text = gr.Textbox(label="Caption", elem_id="caption-text")
                score = gr.Number(label="Score (log-probability)")
                panels = gr.Gallery(
                    label="Attention per word", columns=3, format="png", elem_id="attention"
                )
        button.click(
            caption_upload,
            inputs=[image, search],
            outputs=[caption_text, score, panels],
            api_name="caption",
            preprocess=False,  # read the file ourselves: a broken upload gets a clear message
        )
    return demo


def main(argv=None) -> None:
    serving.serve_run_dir(__doc__.split("\n\n")[0], DEFAULT_RUN_DIR, build_app, argv)


if __name__ == "__main__":
    main()
