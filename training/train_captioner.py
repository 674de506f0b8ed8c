"""Train, evaluate and export a captioner: one command from data to a servable model.

    python -m training.train_captioner                       # the built-in shapes data
    python -m training.train_captioner --data flickr8k:Flickr8k.token.txt:Flicker8k_Dataset \\
        --encoder mobilenet_v3_small --weights imagenet --image-size 224 --run-dir runs/flickr
    python -m training.train_captioner --data coco:captions_train2017.json:train2017 \\
        --val-data coco:captions_val2017.json:val2017 --image-size 224 --run-dir runs/coco

Steps: split the data by image (`captioner.splits`; the sizes are printed and an empty split is
refused before anything is written) and build the vocabulary from the training captions; fit
with validation, checkpoints, TensorBoard and early stopping (a killed run started again with
the same command resumes; decoded images are cached as `training.image_cache` says);
evaluate on the test split (`training.evaluate_captioner`); export the SavedModel to
`<run-dir>/export/captioner/<version>/`. `--help` lists every setting.
"""

from __future__ import annotations

import functools
import json
import zlib
from pathlib import Path

from training import captioner_pipeline as pipeline
from training import distribute, evaluate_captioner, image_cache, run
from training.captioner_config import CaptionerConfig
from training.common import RESUMES, UserError, run_main
from training.feature_cache import cached_features

EXPORT_NAME = pipeline.EXPORT_NAME
# What the default run on the built-in shapes data aims for, greedy, on validation images
# (BLEU-4 on sacrebleu's 0-100 scale; shares as fractions).
SHAPES_TARGETS = {"bleu4": 90.0, "object_recall": 0.95, "attention_localisation": 0.70}
QUALITY_SAMPLES = 3  # pictures drawn after each epoch for the demo page


def refuse_caption_split_runs(run_dir, config: CaptionerConfig) -> None:
    """Refuses to resume a COCO or Flickr8k run started before splits were made by image.

    Such a run split its images by a hash of their first caption; resumed under today's split,
    its validation and test pictures would train. Its config.json has no `split_lists`.
    """
    saved = Path(run_dir) / "config.json"
    if not saved.is_file() or not config.data.startswith(("coco:", "flickr8k:")):
        return
    if "split_lists" not in json.loads(saved.read_text(encoding="utf-8")):
        raise UserError(
            f"{run_dir} holds a run started by an older version of this script, which split "
            "the images by caption, not by image; pass --overwrite to train it again with "
            "today's splits, or choose another --run-dir."
        )


class CaptionerRecipe(run.Recipe):
    """The captioner's steps of the run skeleton (`training.run.train`)."""

    config_class = CaptionerConfig
    export_name = EXPORT_NAME
    export = staticmethod(pipeline.export)

    def load_data(self, config: CaptionerConfig, evaluate: bool) -> pipeline.DataSplits:
        data = pipeline.load_splits(config)
        print(f"splits: {data.how}")
        print(data.describe())
        data.check(pipeline.SPLITS if evaluate else ("train", "validation"))
        return data

    def check_run_dir(self, run_dir: Path, config: CaptionerConfig) -> None:
        refuse_caption_split_runs(run_dir, config)

    def vocabularies(self, config: CaptionerConfig, data: pipeline.DataSplits) -> dict:
        return {"vocabulary.json": pipeline.vocabulary_from_captions(config, data.train_captions())}

    def build(self, config: CaptionerConfig, data: pipeline.DataSplits, vocabularies, run_dir):
        model = pipeline.build_model(config, vocabularies["vocabulary.json"])
        train_data, val_data = data.dataset("train"), data.dataset("validation")
        caches = {"train": None, "validation": None}
        if config.cache_features:
            if not model.cnn_is_frozen:
                raise UserError(
                    "--cache-features needs a frozen keras.applications backbone (e.g. --encoder "
                    "mobilenet_v3_small --fine-tune false); the small_cnn trains with the decoder."
                )
            train_data = cached_features(train_data, model, run_dir / "features" / "train")
            val_data = cached_features(val_data, model, run_dir / "features" / "validation")
        else:
            where, why = image_cache.choose(
                config.cache_images,
                data.sizes["train"] + data.sizes["validation"],
                config.image_size,
                config.cache_memory_gib,
                in_memory_source=config.data == "shapes",
            )
            print(f"image cache: {where} ({why})")
            caches = {split: image_cache.cache_argument(where, run_dir, split) for split in caches}
        seed = zlib.crc32(str(config.seed).encode())
        batch_size = config.batch_size
        train_batches = pipeline.training_batches(
            train_data, model, batch_size, True, seed, caches["train"]
        )
        val_batches = pipeline.training_batches(
            val_data, model, batch_size, False, seed, caches["validation"]
        )
        # A first batch to build the model with, from an uncached pipeline: a cache that is
        # read only in part is thrown away (with a warning, for a file cache).
        first_batch = next(
            iter(pipeline.training_batches(val_data, model, batch_size, False, seed, None))
        )
        # How the workers share the data. shapes (in-memory arrays), coco and flickr8k (a list
        # of image paths decoded in a map: no file-reading dataset to split) and cached
        # features (a generator cache) can only be sharded by DATA: every worker runs the same
        # seeded pipeline and keeps its share of each global batch. TFDS reads TFRecord shards,
        # so AUTO gives each worker its own files (FILE) when there are enough of them, and
        # falls back to DATA otherwise.
        tfds_files = config.data.startswith("tfds:") and not config.cache_features
        policy = distribute.AUTO if tfds_files else distribute.DATA
        model(first_batch[0])  # build every weight before BackupAndRestore restores
        return model, distribute.shard(train_batches, policy), distribute.shard(val_batches, policy)

    def quality_check(self, config: CaptionerConfig, data: pipeline.DataSplits):
        validation = data.dataset("validation")
        keep = evaluate_captioner.sample_indices(data.sizes["validation"], QUALITY_SAMPLES)

        def check(model, samples_dir: Path) -> dict:
            metrics, kept, _ = evaluate_captioner.score_split(model, validation, 1, keep)
            evaluate_captioner.write_samples(kept, model.grid_shape, samples_dir)
            samples = [
                {"image": f"{samples_dir.name}/test_{i}.png", "text": record["caption"]}
                for i, record in enumerate(kept)
            ]
            return {"metrics": metrics, "samples": samples}

        return check

    def quality_targets(self, config: CaptionerConfig) -> dict:
        return dict(SHAPES_TARGETS) if config.data == "shapes" else {}

    def evaluate(self, model, config: CaptionerConfig, run_dir, data: pipeline.DataSplits):
        return evaluate_captioner.evaluate(model, config, run_dir, data.dataset("test"))


# train(config, overwrite=False, evaluate=True) -> metrics: the whole run, as `training.run.train`.
train = functools.partial(run.train, CaptionerRecipe())


def main(argv=None) -> None:
    run.main(CaptionerRecipe(), __doc__, argv)


if __name__ == "__main__":
    run_main(main, stopped=RESUMES)
