"""Every setting of a chatbot run, with defaults that train on the English ChatterBot corpus."""

from __future__ import annotations

from dataclasses import dataclass

from chatbot.model import ENCODER_CELLS
from shared.config import setting
from training.settings import RunSettings


@dataclass
class ChatbotConfig(RunSettings):
    run_dir: str = setting("runs/chatbot", "where the run is written")
    # === Data ===
    data: str = setting(
        "chatterbot",
        "chatterbot[:LANGUAGE[:TOPICS]] | cornell:DIR | tsv:PATH | copy | reverse | sort"
        "[:num=N,min_len=N,max_len=N,vocab_size=N]",
        section="Data",
    )
    on_error: str = setting(
        "default",
        "malformed data lines: raise | skip | default (skip for the shipped ChatterBot corpus, "
        "raise for your own files)",
        ("default", "raise", "skip"),
        section="Data",
    )
    context_turns: int = setting(1, "turns of a conversation that form the prompt", section="Data")
    holdout: float = setting(
        0.0,
        "share of prompts held out of training to measure generalisation (0: train on all, "
        "so the model knows its corpus)",
        section="Data",
    )
    mode: str = setting(
        "word",
        "tokenization (char for Chinese and Japanese)",
        choices=("word", "char"),
        section="Data",
    )
    max_source_length: int = setting(
        40, "longest prompt read, in tokens (longer ones are cut)", section="Data"
    )
    max_target_length: int = setting(64, "longest reply written, in tokens", section="Data")
    max_vocabulary: int = setting(
        20000, "largest vocabulary per side, reserved tokens included", section="Data"
    )
    min_count: int = setting(1, "rarer tokens become [UNK]", section="Data")
    retrieve: bool = setting(
        False,
        "retrieve-and-refine: the encoder also reads the reply of the training prompt nearest "
        "to the message (TF-IDF, inside the export), to copy, adapt or ignore",
        section="Data",
    )
    retrieved_gold_share: float = setting(
        0.5,
        "with --retrieve, the share of training pairs shown their own reply in place of the "
        "nearest other prompt's (drawn every epoch)",
        section="Data",
    )
    # === Encoder ===
    # 128 a direction: the memory (256 wide) feeds every step's output projection, which is
    # most of a served step's time; the corpus is learnt as soon (benchmarks/README.md).
    encoder_units: int = setting(128, "encoder units per direction", section="Encoder")
    encoder_cell: str = setting(
        "lstm", "encoder cell", choices=tuple(ENCODER_CELLS), section="Encoder"
    )
    encoder_layers: int = setting(1, "stacked encoder layers", section="Encoder")
    bidirectional: bool = setting(True, "read the prompt in both directions", section="Encoder")
    token_dropout: float = setting(
        0.0,
        "in training, the share of the tokens the encoder reads replaced by [UNK] (word "
        "dropout): replies to new wording improve, corpus recall falls",
        section="Encoder",
    )
    # === Decoder (the rest in RunSettings) ===
    embedding_dim: int = setting(
        128, "token embedding size (of the encoder too)", section="Decoder"
    )
    dropout: float = setting(
        0.0,
        "dropout on embeddings and output features, in the encoder too (0: the default run "
        "memorises its corpus)",
        section="Decoder",
    )
    input_feeding: bool = setting(
        True, "Luong placement: feed the attentional vector back", section="Decoder"
    )
    # === Training (the rest in RunSettings) ===
    epochs: int = setting(40, "most passes over the training pairs", section="Training")
    # Small batches and a large rate: the default run memorises its corpus, which takes many
    # updates (benchmarks/README.md, time to quality).
    batch_size: int = setting(32, "pairs per step", section="Training")
    learning_rate: float = setting(1e-2, "Adam learning rate (the peak one)", section="Training")
    patience: int = setting(5, "epochs without improvement before stopping", section="Training")
    seed: int = setting(
        0, "seeds Python, NumPy and TensorFlow, and the data split", section="Training"
    )
    # === Evaluation (the rest in RunSettings) ===
    samples: int = setting(6, "attention heatmaps written to samples/", section="Evaluation")

    def encoder_settings(self) -> dict:
        """The `chatbot.model` encoder arguments these settings give."""
        return {
            "embedding_dim": self.embedding_dim,
            "units": self.encoder_units,
            "cell": self.encoder_cell,
            "num_layers": self.encoder_layers,
            "bidirectional": self.bidirectional,
            "dropout": self.dropout,
            "token_dropout": self.token_dropout,
        }

    def decoder_settings(self) -> dict:
        return {**super().decoder_settings(), "input_feeding": self.input_feeding}
