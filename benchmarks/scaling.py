"""How our training step grows: time and memory vs sequence length, image regions, vocabulary.

Three sweeps at embedding 256, units 512, batch 64, on random token ids (no padding, so
every token is real), each point in its own process so its peak RSS is its own:

- sequence length 10 → 100: the chatbot (`Seq2Seq`, bidirectional LSTM encoder) with prompt
  and reply both that long, vocabulary 1000;
- image regions 16 → 196 (4x4, 8x8, 14x14 grids): the decoder alone (`AttentionDecoder`) on
  random region features (feature size 128, as the captioner's), captions of 24 tokens, so
  the CNN's cost, which grows with the image, is not mixed in;
- vocabulary 1k → 30k: the chatbot with prompts and replies of 24 tokens.

    python -m benchmarks.scaling            # a few minutes
    python -m benchmarks.scaling --quick
"""

from __future__ import annotations

import keras
import numpy as np

from benchmarks import common

NAME = "scaling"


def specs(quick: bool) -> list[dict]:
    lengths = (4, 8) if quick else (10, 50, 100)
    regions = (4, 9) if quick else (16, 64, 196)
    vocabularies = (50, 200) if quick else (1000, 10000, 30000)
    rows = [{"sweep": "sequence length", "value": n, "length": n} for n in lengths]
    rows += [{"sweep": "image regions", "value": n, "regions": n} for n in regions]
    rows += [{"sweep": "vocabulary", "value": n, "vocab": n} for n in vocabularies]
    for row in rows:
        row["label"] = f"{row['sweep']} = {row['value']}"
        row["quick"] = quick
    return rows


class DecoderOnly(keras.Model):
    """`{"memory", "decoder_inputs"}` -> logits: the shared decoder alone."""

    def __init__(self, decoder, **kwargs):
        super().__init__(**kwargs)
        self.decoder = decoder

    def call(self, inputs, training=False):
        return self.decoder(inputs["decoder_inputs"], inputs["memory"], training=training)[0]


def build(spec: dict):
    """(model compiled like the training scripts', inputs, labels) for one point."""
    from benchmarks import setups
    from chatbot.data import synthetic_vocabulary
    from chatbot.model import Seq2Seq
    from shared.decoder import AttentionDecoder
    from shared.metrics import MaskedAccuracy, MaskedCrossEntropy
    from shared.text import RESERVED_TOKENS

    size = setups.QUICK if spec["quick"] else setups.FULL
    batch, rng = size.batch_size, np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    decoder = {"embedding_dim": size.embedding_dim, "units": size.units, "dropout": 0.1}
    if spec["sweep"] == "image regions":
        vocab, target_len = 1000 if not spec["quick"] else 50, 24 if not spec["quick"] else 6
        model = DecoderOnly(AttentionDecoder(vocab, **decoder))
        inputs = {
            "memory": rng.normal(size=(batch, spec["regions"], 128)).astype("float32"),
            "decoder_inputs": rng.integers(5, vocab, (batch, target_len)).astype("int32"),
        }
    else:
        vocab = spec.get("vocab", 1000 if not spec["quick"] else 50)
        length = spec.get("length", 24 if not spec["quick"] else 6)
        tokens = list(RESERVED_TOKENS) + synthetic_vocabulary(vocab - len(RESERVED_TOKENS))
        model = Seq2Seq(
            tokens,
            tokens,
            max_source_length=length,
            max_target_length=length + 1,
            encoder={
                "embedding_dim": size.embedding_dim,
                "units": size.encoder_units,
                "dropout": 0.1,
            },
            decoder=decoder,
        )
        inputs = {
            "source": rng.integers(5, vocab, (batch, length)).astype("int32"),
            "decoder_inputs": rng.integers(5, vocab, (batch, length)).astype("int32"),
        }
    labels = rng.integers(5, vocab, inputs["decoder_inputs"].shape).astype("int32")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3, clipnorm=5.0),
        loss=MaskedCrossEntropy(),
        metrics=[MaskedAccuracy()],
    )
    model(inputs)
    return model, inputs, labels


def measure(spec: dict) -> dict:
    import time

    model, inputs, labels = build(spec)
    rss_built = common.current_rss_mb()
    start = time.perf_counter()
    model.train_on_batch(inputs, labels)
    first_s = time.perf_counter() - start
    timing = common.time_calls(
        lambda: model.train_on_batch(inputs, labels),
        repeats=1 if spec["quick"] else 4,
        warmup=1,
    )
    tokens = int(np.prod(labels.shape))
    return {
        "step_ms_p50": timing["p50_ms"],
        "tokens_per_s": tokens / (timing["p50_ms"] / 1000),
        "first_step_s": first_s,
        "rss_built_mb": rss_built,
        "peak_rss_mb": common.peak_rss_mb(),
    }


COLUMNS = common.columns(
    """
    sweep        | sweep
    value        | value
    step_ms_p50  | step ms p50     | .0f
    tokens_per_s | target tokens/s | .0f
    first_step_s | first step s    | .1f
    rss_built_mb | RSS built MB    | .0f
    peak_rss_mb  | peak RSS MB     | .0f
    """
)


def main(argv=None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    if common.answer_worker(args, measure):
        return
    rows = common.run_specs("benchmarks." + NAME, specs(args.quick), measure, not args.quick)
    common.report(NAME, args, rows, COLUMNS)


if __name__ == "__main__":
    main()
