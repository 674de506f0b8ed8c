"""Every setting of a captioner run, with defaults that train on the built-in shapes data."""

from __future__ import annotations

from dataclasses import dataclass

from captioner.encoder import ENCODERS
from shared.config import setting
from training.settings import WEIGHT_AVERAGE_HELP, RunSettings


@dataclass
class CaptionerConfig(RunSettings):
    run_dir: str = setting("runs/captioner", "where the run is written")
    # === Data ===
    data: str = setting(
        "shapes",
        "shapes (built in) | coco:ANNOTATIONS.json:IMAGE_DIR | flickr8k:TOKEN_FILE:IMAGE_DIR "
        "| tfds:coco_captions",
        section="Data",
    )
    val_data: str = setting(
        "",
        "held-out images in the --data format (coco:captions_val2017.json:val2017): split in "
        "half by image into validation and test, and every image of --data trains; empty: "
        "--data is split (captioner/splits.py)",
        section="Data",
    )
    split_lists: str = setting(
        "auto",
        "flickr8k: FOLDER holding Flickr_8k.trainImages.txt, Flickr_8k.devImages.txt and "
        "Flickr_8k.testImages.txt | auto: the token file's folder, if it holds them | none: "
        "90/5/5 by a hash of each image's file name",
        section="Data",
    )
    on_error: str = setting(
        "raise",
        "malformed annotation lines, missing image files: raise | skip",
        ("raise", "skip"),
        section="Data",
    )
    cache_images: str = setting(
        "auto",
        "where decoded training and validation images are kept between epochs: memory | disk "
        "(a file cache in <run-dir>/image_cache) | none (decoded again every epoch) | auto "
        "(memory up to --cache-memory-gib, disk above it; the shapes data always in memory)",
        ("auto", "memory", "disk", "none"),
        section="Data",
    )
    cache_memory_gib: float = setting(
        2.0, "--cache-images auto: the most GiB of decoded images kept in memory", section="Data"
    )
    data_dir: str = setting(
        "data", "where generated data and TFDS datasets are kept", section="Data"
    )
    num_train: int = setting(6000, "shapes scenes for training", section="Data")
    num_val: int = setting(300, "shapes scenes for validation", section="Data")
    num_test: int = setting(500, "shapes scenes for the test split", section="Data")
    image_size: int = setting(64, "images are resized to this square size", section="Data")
    max_length: int = setting(24, "longest caption in tokens (longer ones are cut)", section="Data")
    max_vocabulary: int = setting(
        10000, "largest vocabulary, reserved tokens included", section="Data"
    )
    min_count: int = setting(
        1, "words seen fewer times in training captions become [UNK]", section="Data"
    )
    # === Encoder ===
    encoder: str = setting("small_cnn", "image encoder", choices=ENCODERS, section="Encoder")
    # Narrower widths (16,32,64,128) make a training step faster, but the run that tried
    # them as the default ended below the localisation target on the test split
    # (benchmarks/README.md, time to quality).
    cnn_filters: str = setting(
        "32,64,128,128",
        "small_cnn: the widths of its convolution blocks, comma-separated (each block but the "
        "last halves the picture)",
        section="Encoder",
    )
    weights: str = setting(
        "none", "backbone weights: imagenet | none | PATH to a weights file", section="Encoder"
    )
    fine_tune: bool = setting(False, "train the backbone's weights too", section="Encoder")
    cache_features: bool = setting(
        False,
        "frozen backbones: run the CNN once, cache its features in <run-dir>/features",
        section="Encoder",
    )
    feature_dim: int = setting(128, "size of each region feature", section="Encoder")
    # === Decoder (the rest in RunSettings) ===
    embedding_dim: int = setting(64, "word embedding size", section="Decoder")
    dropout: float = setting(0.1, "dropout on embeddings and output features", section="Decoder")
    attention_regularization: float = setting(
        0.0, "doubly stochastic attention penalty λ (Xu et al. use 1.0)", section="Decoder"
    )
    # === Training (the rest in RunSettings) ===
    epochs: int = setting(
        20,
        "most passes over the training images (the built-in data stops at its targets sooner)",
        section="Training",
    )
    batch_size: int = setting(
        64, "images per step (each with one of its captions at random)", section="Training"
    )
    # The averaged weights reach the built-in data's targets in fewer epochs: the raw weights'
    # object recall jumps up and down from one epoch to the next (benchmarks/README.md).
    weight_average: float = setting(0.99, WEIGHT_AVERAGE_HELP, section="Training")
    patience: int = setting(
        3, "epochs without validation improvement before stopping", section="Training"
    )
    # === Evaluation (the rest in RunSettings) ===
    samples: int = setting(8, "attention pictures written to samples/", section="Evaluation")
