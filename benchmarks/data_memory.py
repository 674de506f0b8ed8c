"""Peak memory of the captioner's data pipeline on a COCO-format set, per --cache-images mode.

    python -m benchmarks.data_memory                # 5,000 images at 224 px: ~8 min on 2 cores
    python -m benchmarks.data_memory --quick        # 300 images at 64 px: the smoke test

Writes a synthetic COCO-format set (small JPEGs, templated captions) into a temporary folder;
nothing is downloaded. Each row runs in a fresh process (`common.run_isolated`), because a
process's peak resident memory never goes down:

- `train/<mode>`: the training pipeline (`captioner_pipeline.training_batches`, as training builds it:
  decode, cache, shuffle 4096, one random caption, batch 64) read for two passes, the first
  filling the cache, the second reading it; --cache-images memory, disk and none. The model's
  training steps are left out: their memory does not depend on the number of images.
- `evaluate/stream`: `evaluate_captioner.score_split` (greedy) with a tiny model: what it keeps
  is the captions, references and the drawn samples.
- `evaluate/hold all`: the same images through `caption_split`, which returns every record
  (image and attention): how evaluation held the test split before it streamed.

`peak − built` is what the pipeline added to the process. The COCO column extrapolates it to
the 118,287 training images of COCO 2017 at the same size: the memory cache grows by one
decoded picture per image; with disk and none only the shuffle buffer (4,096 pictures, full at
5,000 images already) and the prefetched batches are held, so the figure stays as measured.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common

COCO_TRAIN_IMAGES = 118_287
TEMPLATES = ("a red circle", "a blue square on grass", "two dogs play in the snow", "a man rides")


def write_coco_set(folder: Path, count: int) -> str:
    """`count` 160x120 JPEGs (smooth colours and noise) and a captions file; returns `coco:…`."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 160)[None, :, None] * np.linspace(0, 1, 120)[:, None, None]
    entries, annotations = [], []
    for i in range(count):
        colour = rng.integers(0, 256, 3)
        pixels = ramp * colour + rng.normal(0, 12, (120, 160, 3))
        name = f"{i:012d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(images / name, quality=85)
        entries.append({"id": i, "file_name": name})
        annotations += [
            {"image_id": i, "caption": TEMPLATES[(i + k) % len(TEMPLATES)]} for k in range(5)
        ]
    path = folder / "captions.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations}))
    return f"coco:{path}:{images}"


def tiny_config(spec: dict):
    from training.captioner_config import CaptionerConfig

    return CaptionerConfig(
        data=spec["data"],
        run_dir=spec["run_dir"],
        image_size=spec["image_size"],
        split_lists="none",
        units=8,
        embedding_dim=4,
        feature_dim=8,
        batch_size=64,
    )


def measure(spec: dict) -> dict:
    """One row, in this process."""
    from captioner import data as caption_data
    from training import captioner_pipeline, evaluate_captioner, image_cache

    config = tiny_config(spec)
    data = captioner_pipeline.load_splits(config)
    vocabulary = captioner_pipeline.vocabulary_from_captions(config, data.train_captions())
    model = captioner_pipeline.build_model(config, vocabulary)
    two = captioner_pipeline.training_batches(
        data.dataset("validation").take(2), model, 2, False, 0, None
    )
    model(next(iter(two))[0])  # built on two pictures: a batch of 64 would raise the peak
    built, peak_before = common.current_rss_mb(), common.peak_rss_mb()
    kind, mode = spec["label"].split("/")
    if kind == "train":
        where = image_cache.cache_argument(mode, Path(config.run_dir), "train")
        batches = captioner_pipeline.training_batches(
            data.dataset("train"), model, 64, True, 0, where
        )
        passes = []
        for _ in range(2):
            start = time.perf_counter()
            images = sum(int(labels.shape[0]) for _, labels in batches)
            passes.append(common.seconds_since(start))
        on_disk = sum(p.stat().st_size for p in Path(config.run_dir).rglob("*") if p.is_file())
        return {
            "images": images,
            "built_mb": built,
            "peak_before_mb": peak_before,
            "peak_mb": common.peak_rss_mb(),
            "end_mb": common.current_rss_mb(),  # the memory cache is still referenced here
            "pass1_s": passes[0],
            "pass2_s": passes[1],
            "disk_cache_mb": on_disk / 2**20,
        }
    _, annotations, image_dir = config.data.split(":")
    every_image = caption_data.read_coco_json(annotations, image_dir)
    every_image = every_image.subset(range(min(spec["eval_images"], len(every_image))))
    test = caption_data.image_files_dataset(every_image, config.image_size)
    start = time.perf_counter()
    if mode == "stream":
        keep = evaluate_captioner.sample_indices(len(every_image), 8)
        _, kept, images = evaluate_captioner.score_split(model, test, 1, keep)
    else:
        kept = evaluate_captioner.caption_split(model, test, 1)
        evaluate_captioner.score(kept, model.grid_shape)
        images = len(kept)
    return {
        "images": images,
        "built_mb": built,
        "peak_before_mb": peak_before,
        "peak_mb": common.peak_rss_mb(),
        "end_mb": common.current_rss_mb(),  # `kept` is still referenced here
        "pass1_s": common.seconds_since(start),
    }


def extrapolate(row: dict, image_size: int) -> float | None:
    """Peak RSS (MB) of a training row with COCO 2017's training images (all of them train when
    --val-data holds out val2017) instead of the row's; None for the evaluation rows."""
    if "error" in row:
        return None
    if row["label"] == "train/memory":
        extra = (COCO_TRAIN_IMAGES - row["images"]) * image_size * image_size * 3 / 2**20
        return row["peak_mb"] + extra
    if row["label"].startswith("train/"):
        return row["peak_mb"]
    return None


def main(argv=None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--images", type=int, default=5000, help="images in the synthetic set")
    parser.add_argument("--image-size", type=int, default=224, help="decoded size in pixels")
    parser.add_argument("--eval-images", type=int, default=2000, help="images captioned")
    args = parser.parse_args(argv)
    if common.answer_worker(args, measure):
        return
    if args.quick:
        args.images, args.image_size, args.eval_images = 300, 64, 200
    folder = Path(tempfile.mkdtemp(prefix="glimpse-data-memory-"))
    try:
        print(f"writing {args.images} JPEGs to {folder}", file=sys.stderr)
        data = write_coco_set(folder / "set", args.images)
        specs = []
        for label in (
            "train/memory",
            "train/disk",
            "train/none",
            "evaluate/stream",
            "evaluate/hold all",
        ):
            specs.append(
                {
                    "label": label,
                    "data": data,
                    "run_dir": str(folder / "runs" / label.replace("/", "-").replace(" ", "-")),
                    "image_size": args.image_size,
                    "eval_images": args.eval_images,
                }
            )
        rows = common.run_specs("benchmarks.data_memory", specs, measure, isolate=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for row in rows:
        if "error" not in row:
            row["added_mb"] = row["peak_mb"] - row["built_mb"]
            row["coco_peak_mb"] = extrapolate(row, args.image_size)
    columns = common.columns(
        f"""
        label          | pipeline
        images         | images
        built_mb       | RSS built (MB)                               | .0f
        peak_before_mb | peak before (MB)                             | .0f
        peak_mb        | peak RSS (MB)                                | .0f
        end_mb         | RSS at end (MB)                              | .0f
        added_mb       | peak − built (MB)                            | .0f
        pass1_s        | pass 1 (s)                                   | .1f
        pass2_s        | pass 2 (s)                                   | .1f
        disk_cache_mb  | disk cache (MB)                              | .0f
        coco_peak_mb   | COCO {COCO_TRAIN_IMAGES:,} images: peak (MB) | .0f
        """
    )
    print(f"{args.images} synthetic COCO-format images at {args.image_size} px")
    results = {"images": args.images, "image_size": args.image_size, "rows": rows}
    common.report("data_memory", args, rows, columns, results)


if __name__ == "__main__":
    main()
