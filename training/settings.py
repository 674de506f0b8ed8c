"""The settings every run has, whatever it trains: decoder, training, devices and evaluation.

`CaptionerConfig` (training/captioner_config.py) and `ChatbotConfig`
(training/chatbot_config.py) extend `RunSettings` with their data and encoder settings, and
declare again only the fields whose default or help differs for them (a dataclass field
declared again keeps its place). The choices of a setting come from the module that owns them:
cells and placements from `shared.decoder`, scores from `shared.attention`, strategies from
`training.distribute`. `--help` groups the settings by their `section`.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.attention import ATTENTION_SCORES
from shared.config import setting
from shared.decoder import CELLS, PLACEMENTS, default_placement
from training.distribute import STRATEGIES
from training.schedule import SCHEDULES

PRECISIONS = ("float32", "mixed_bfloat16")
WEIGHT_AVERAGE_HELP = (
    "Polyak averaging: validation, the kept model and the export use a moving average of the "
    "weights with this momentum (0.99: about the last 100 steps); 0: off"
)


@dataclass
class RunSettings:
    run_dir: str = setting("runs/run", "where the run is written")
    # === Decoder ===
    embedding_dim: int = setting(64, "token embedding size", section="Decoder")
    units: int = setting(256, "decoder units per layer", section="Decoder")
    attention_units: int = setting(
        0, "size of the additive or concat attention score (0: --units)", section="Decoder"
    )
    cell: str = setting("lstm", "decoder cell", choices=tuple(CELLS), section="Decoder")
    num_layers: int = setting(1, "stacked decoder layers", section="Decoder")
    attention: str = setting(
        "additive",
        "attention score",
        choices=tuple(ATTENTION_SCORES) + ("none",),
        section="Decoder",
    )
    placement: str | None = setting(
        None,
        "where attention enters the decoder (unset: bahdanau with attention, init_state with "
        "--attention none)",
        choices=PLACEMENTS,
        section="Decoder",
    )
    dropout: float = setting(0.0, "dropout on embeddings and output features", section="Decoder")
    # === Training ===
    epochs: int = setting(10, "most passes over the training data", section="Training")
    batch_size: int = setting(64, "examples per step", section="Training")
    learning_rate: float = setting(3e-3, "Adam learning rate (the peak one)", section="Training")
    schedule: str = setting(
        "constant",
        "learning rate over the run: constant | cosine (decays to a twentieth of the peak at "
        "the last of --epochs)",
        SCHEDULES,
        section="Training",
    )
    warmup_epochs: float = setting(
        0.0,
        "epochs over which the rate rises linearly from a tenth of the peak to it",
        section="Training",
    )
    weight_average: float = setting(0.0, WEIGHT_AVERAGE_HELP, section="Training")
    patience: int = setting(3, "epochs without improvement before stopping", section="Training")
    seed: int = setting(0, "seeds Python, NumPy and TensorFlow", section="Training")
    strategy: str = setting(
        "default",
        "tf.distribute strategy: default (one device) | mirrored (GPUs of this machine) | "
        "multiworker (several machines, each with its TF_CONFIG) | tpu; --batch-size is split "
        "across the replicas; see the README's scaling section",
        STRATEGIES,
        section="Training",
    )
    devices: str = setting(
        "",
        "mirrored: a count (2; on a machine without GPUs, logical CPU devices) or a list "
        "(GPU:0,GPU:2); multiworker: GPUs per worker; tpu: the TPU name (empty: all / local)",
        section="Training",
    )
    jit_compile: bool = setting(
        False,
        "compile each training step with XLA; Keras refuses it for these models (their text "
        "lookup layers), so true stops the run with an error until that changes",
        section="Training",
    )
    precision: str = setting(
        "float32",
        "float32 | mixed_bfloat16 (bfloat16 products, float32 weights and logits): for GPUs, "
        "TPUs and CPUs whose TensorFlow kernels use bf16 instructions (AMX, AVX-512 BF16); "
        "slower where they convert every product, see benchmarks/README.md",
        PRECISIONS,
        section="Training",
    )
    # === Evaluation ===
    check_quality: bool = setting(
        True,
        "after every epoch, measure quality on the validation data (the figures `evaluate` "
        "reports) and draw a few samples: seen in progress.json, history.csv and TensorBoard",
        section="Evaluation",
    )
    stop_at_targets: bool = setting(
        True,
        "built-in data: stop at the first epoch whose validation quality reaches the "
        "application's targets, and keep that epoch (other data: no targets, no effect)",
        section="Evaluation",
    )
    beam_size: int = setting(3, "beam size for the beam-search evaluation", section="Evaluation")
    samples: int = setting(6, "attention pictures written to samples/", section="Evaluation")

    def __post_init__(self):
        if not 0.0 <= self.weight_average < 1.0:
            raise ValueError(
                "Expected --weight-average from 0 (off) up to, not including, 1. Received: "
                f"weight_average={self.weight_average}"
            )
        # Resolved here, so config.json names the placement the run really used.
        if self.placement is None:
            self.placement = default_placement(self.attention)

    def decoder_settings(self) -> dict:
        """The `AttentionDecoder` arguments these settings give."""
        return {
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "attention_units": self.attention_units or None,
            "cell": self.cell,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "attention": self.attention,
            "placement": self.placement,
        }
