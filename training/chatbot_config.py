"""Every setting of a chatbot run, with defaults that train on the English ChatterBot corpus."""

from __future__ import annotations

from dataclasses import dataclass

from chatbot.model import ENCODER_CELLS
from shared.attention import ATTENTION_SCORES
from shared.config import setting
from shared.decoder import CELLS, PLACEMENTS, default_placement


@dataclass
class ChatbotConfig:
    run_dir: str = setting("runs/chatbot", "where the run is written")
    # === Data ===
    data: str = setting(
        "chatterbot",
        "chatterbot[:LANGUAGE[:TOPICS]] | cornell:DIR | tsv:PATH | copy | reverse | sort"
        "[:num=N,min_len=N,max_len=N,vocab_size=N]",
    )
    on_error: str = setting(
        "default",
        "malformed data lines: raise | skip | default (skip for the shipped ChatterBot corpus, "
        "raise for your own files)",
        ("default", "raise", "skip"),
    )
    context_turns: int = setting(1, "turns of a conversation that form the prompt")
    holdout: float = setting(
        0.0,
        "share of prompts held out of training to measure generalisation (0: train on all, "
        "so the model knows its corpus)",
    )
    mode: str = setting(
        "word", "tokenization (char for Chinese and Japanese)", choices=("word", "char")
    )
    max_source_length: int = setting(40, "longest prompt read, in tokens (longer ones are cut)")
    max_target_length: int = setting(64, "longest reply written, in tokens")
    max_vocabulary: int = setting(20000, "largest vocabulary per side, reserved tokens included")
    min_count: int = setting(1, "rarer tokens become [UNK]")
    # === Model ===
    embedding_dim: int = setting(128, "token embedding size")
    encoder_units: int = setting(256, "encoder units per direction")
    encoder_cell: str = setting("lstm", "encoder cell", choices=tuple(ENCODER_CELLS))
    encoder_layers: int = setting(1, "stacked encoder layers")
    bidirectional: bool = setting(True, "read the prompt in both directions")
    units: int = setting(256, "decoder units per layer")
    cell: str = setting("lstm", "decoder cell", choices=tuple(CELLS))
    num_layers: int = setting(1, "stacked decoder layers")
    attention: str = setting(
        "additive", "attention score", choices=tuple(ATTENTION_SCORES) + ("none",)
    )
    placement: str | None = setting(
        None,
        "where attention enters the decoder (unset: bahdanau with attention, init_state with "
        "--attention none)",
        choices=PLACEMENTS,
    )
    input_feeding: bool = setting(True, "Luong placement: feed the attentional vector back")
    dropout: float = setting(
        0.0, "dropout on embeddings and output features (0: the default run memorises its corpus)"
    )
    # === Training ===
    epochs: int = setting(60, "most passes over the training pairs")
    batch_size: int = setting(64, "pairs per step")
    learning_rate: float = setting(3e-3, "Adam learning rate")
    patience: int = setting(5, "epochs without improvement before stopping")
    seed: int = setting(0, "seeds Python, NumPy and TensorFlow, and the data split")
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
    samples: int = setting(6, "attention heatmaps written to samples/")

    def encoder_settings(self) -> dict:
        return {
            "embedding_dim": self.embedding_dim,
            "units": self.encoder_units,
            "cell": self.encoder_cell,
            "num_layers": self.encoder_layers,
            "bidirectional": self.bidirectional,
            "dropout": self.dropout,
        }

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
            "input_feeding": self.input_feeding,
        }
