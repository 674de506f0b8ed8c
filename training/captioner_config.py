"""Every setting of a captioner run, with defaults that train on the built-in shapes data."""

from __future__ import annotations

from dataclasses import dataclass

from captioner.encoder import ENCODERS
from shared.attention import ATTENTION_SCORES
from shared.config import setting
from shared.decoder import CELLS, PLACEMENTS, default_placement


@dataclass
class CaptionerConfig:
    run_dir: str = setting("runs/captioner", "where the run is written")
    # === Data ===
    data: str = setting(
        "shapes",
        "shapes (built in) | coco:ANNOTATIONS.json:IMAGE_DIR | flickr8k:TOKEN_FILE:IMAGE_DIR "
        "| tfds:coco_captions",
    )
    val_data: str = setting(
        "",
        "held-out images in the --data format (coco:captions_val2017.json:val2017): split in "
        "half by image into validation and test, and every image of --data trains; empty: "
        "--data is split (captioner/splits.py)",
    )
    split_lists: str = setting(
        "auto",
        "flickr8k: FOLDER holding Flickr_8k.trainImages.txt, Flickr_8k.devImages.txt and "
        "Flickr_8k.testImages.txt | auto: the token file's folder, if it holds them | none: "
        "90/5/5 by a hash of each image's file name",
    )
    on_error: str = setting(
        "raise", "malformed annotation lines, missing image files: raise | skip", ("raise", "skip")
    )
    cache_images: str = setting(
        "auto",
        "where decoded training and validation images are kept between epochs: memory | disk "
        "(a file cache in <run-dir>/image_cache) | none (decoded again every epoch) | auto "
        "(memory up to --cache-memory-gib, disk above it; the shapes data always in memory)",
        ("auto", "memory", "disk", "none"),
    )
    cache_memory_gib: float = setting(
        2.0, "--cache-images auto: the most GiB of decoded images kept in memory"
    )
    data_dir: str = setting("data", "where generated data and TFDS datasets are kept")
    num_train: int = setting(6000, "shapes scenes for training")
    num_val: int = setting(300, "shapes scenes for validation")
    num_test: int = setting(500, "shapes scenes for the test split")
    image_size: int = setting(64, "images are resized to this square size")
    max_length: int = setting(24, "longest caption in tokens (longer ones are cut)")
    max_vocabulary: int = setting(10000, "largest vocabulary, reserved tokens included")
    min_count: int = setting(1, "words seen fewer times in training captions become [UNK]")
    # === Encoder ===
    encoder: str = setting("small_cnn", "image encoder", choices=ENCODERS)
    weights: str = setting("none", "backbone weights: imagenet | none | PATH to a weights file")
    fine_tune: bool = setting(False, "train the backbone's weights too")
    cache_features: bool = setting(
        False, "frozen backbones: run the CNN once, cache its features in <run-dir>/features"
    )
    feature_dim: int = setting(128, "size of each region feature")
    # === Decoder ===
    embedding_dim: int = setting(64, "word embedding size")
    units: int = setting(256, "recurrent units per layer")
    cell: str = setting("lstm", "recurrent cell", choices=tuple(CELLS))
    num_layers: int = setting(1, "stacked recurrent layers")
    attention: str = setting(
        "additive", "attention score", choices=tuple(ATTENTION_SCORES) + ("none",)
    )
    placement: str | None = setting(
        None,
        "where attention enters the decoder (unset: bahdanau with attention, init_state with "
        "--attention none)",
        choices=PLACEMENTS,
    )
    dropout: float = setting(0.1, "dropout on embeddings and output features")
    attention_regularization: float = setting(
        0.0, "doubly stochastic attention penalty λ (Xu et al. use 1.0)"
    )
    # === Training ===
    epochs: int = setting(12, "most passes over the training images")
    batch_size: int = setting(64, "images per step (each with one of its captions at random)")
    learning_rate: float = setting(3e-3, "Adam learning rate")
    patience: int = setting(3, "epochs without validation improvement before stopping")
    seed: int = setting(0, "seeds Python, NumPy and TensorFlow")
    strategy: str = setting(
        "default",
        "tf.distribute strategy: default (one device) | mirrored (GPUs of this machine) | "
        "multiworker (several machines, each with its TF_CONFIG) | tpu; --batch-size is split "
        "across the replicas; see the README's scaling section",
        ("default", "mirrored", "multiworker", "tpu"),
    )
    devices: str = setting(
        "",
        "mirrored: a count (2; on a machine without GPUs, logical CPU devices) or a list "
        "(GPU:0,GPU:2); multiworker: GPUs per worker; tpu: the TPU name (empty: all / local)",
    )
    jit_compile: bool = setting(
        False,
        "compile each training step with XLA (compiles once per batch shape; whether it is "
        "faster depends on the machine: benchmarks/README.md has measurements)",
    )
    precision: str = setting(
        "float32",
        "float32 | mixed_bfloat16 (bfloat16 products, float32 weights and logits): for GPUs, "
        "TPUs and CPUs with bf16 instructions (AMX, AVX-512 BF16); slower on other CPUs, "
        "see benchmarks/README.md",
        ("float32", "mixed_bfloat16"),
    )
    # === Evaluation ===
    beam_size: int = setting(3, "beam size for the beam-search evaluation")
    samples: int = setting(8, "attention pictures written to samples/")

    def __post_init__(self):
        # Resolved here, so config.json names the placement the run really used.
        if self.placement is None:
            self.placement = default_placement(self.attention)

    def decoder_settings(self) -> dict:
        return {
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "cell": self.cell,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "attention": self.attention,
            "placement": self.placement,
        }
