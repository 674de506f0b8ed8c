"""The same models written the usual tutorial way: what our numbers are compared against.

This is how TensorFlow's "Neural machine translation with attention" and "Image captioning with
visual attention" tutorials write an attention decoder, kept deliberately naive:

- a `BahdanauAttention` layer that projects the whole memory (`W2(values)`, the keys) again at
  every decoding step;
- a decoder that runs one time step per call: attention with the previous state, the LSTM cell,
  and the vocabulary projection of that step;
- a `train_step` in a plain `tf.function` with a Python `for t in range(T)` loop, which
  unrolls into a graph of T copies of the step (one trace per target length);
- greedy decoding in eager mode, one token per Python iteration, with a `.numpy()` round trip
  for every token.

The architecture is exactly ours (`shared/decoder.py`, placement `bahdanau`, LSTM, additive
attention): the same weights in the same shapes, so `copy_weights` can load a model of ours
into a baseline, and the two give the same loss and the same greedy tokens. The encoders are
the same Keras layers as ours (the CNN and region grid, or the bidirectional LSTM): the
comparison is about the decoder loop.

    python -m benchmarks.baseline            # checks the equivalence on one batch, prints it
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from benchmarks import common
from shared.text import END_ID, PAD_ID, START_ID

# === Layers, tutorial style ===


class BahdanauAttention(keras.layers.Layer):
    """score = V(tanh(W1(query) + W2(values))), recomputing W2(values) at every call."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.W1 = keras.layers.Dense(units, use_bias=False)
        self.W2 = keras.layers.Dense(units, use_bias=False)
        self.V = keras.layers.Dense(1, use_bias=False)

    def call(self, query, values, mask):
        query_with_time_axis = tf.expand_dims(query, 1)  # (batch, 1, units)
        score = self.V(tf.nn.tanh(self.W1(query_with_time_axis) + self.W2(values)))  # (b, S, 1)
        score = tf.where(mask[:, :, None], score, -1e9)
        attention_weights = tf.nn.softmax(score, axis=1)
        context_vector = tf.reduce_sum(attention_weights * values, axis=1)
        return context_vector, attention_weights[:, :, 0]


class BaselineDecoder(keras.layers.Layer):
    """One step per call: attention(s_{t-1}) -> LSTM cell -> logits of that step."""

    def __init__(self, vocabulary_size, embedding_dim, units, attention_units=None, dropout=0.0):
        super().__init__()
        self.units = units
        self.embedding = keras.layers.Embedding(vocabulary_size, embedding_dim)
        self.attention = BahdanauAttention(attention_units or units)
        self.lstm = keras.layers.LSTMCell(units)
        self.bridge = keras.layers.Dense(2 * units, activation="tanh")
        self.fc = keras.layers.Dense(vocabulary_size)
        self.input_dropout = keras.layers.Dropout(dropout)
        self.output_dropout = keras.layers.Dropout(dropout)

    def initial_state(self, memory, mask):
        weights = tf.cast(mask, memory.dtype)[:, :, None]
        summary = tf.reduce_sum(memory * weights, 1) / tf.maximum(tf.reduce_sum(weights, 1), 1.0)
        h, c = tf.split(self.bridge(summary), 2, axis=-1)
        return [h, c]

    def call(self, x, hidden, memory, mask, training=False):
        """x: int `(batch,)`; hidden: [h, c]. Returns logits `(batch, vocab)`, state, weights."""
        context_vector, attention_weights = self.attention(hidden[0], memory, mask)
        x = self.input_dropout(self.embedding(x), training=training)
        x = tf.concat([x, context_vector], axis=-1)
        output, state = self.lstm(x, hidden)
        features = tf.concat([output, context_vector], axis=-1)
        logits = self.fc(self.output_dropout(features, training=training))
        return logits, list(state), attention_weights


class BaselineModel(keras.Model):
    """An encoder of ours (a callable `inputs -> (memory, mask)`) and the baseline decoder."""

    def __init__(self, encode, decoder: BaselineDecoder, encoder_layers):
        super().__init__()
        self.encode_fn = encode
        self.decoder = decoder
        self.encoder_layers = encoder_layers  # tracked, so their variables train

    def encode(self, inputs, training=False):
        return self.encode_fn(inputs, training)


# === Building one from a model of ours ===


def _decoder_like(ours) -> BaselineDecoder:
    d = ours.decoder
    if d.placement != "bahdanau" or d.cell_type != "lstm" or d.num_layers != 1:
        raise ValueError("The baseline only mirrors the bahdanau / lstm / 1-layer decoder.")
    return BaselineDecoder(
        d.vocabulary_size, d.embedding_dim, d.units, d.attention_units, dropout=d.dropout
    )


def captioner_baseline(ours):
    """A baseline of a `Captioner`: a fresh CNN and region grid of the same kind, our decoder's
    sizes. `copy_weights(ours, baseline)` then makes it compute exactly what `ours` does."""
    from captioner.encoder import PixelScaling, RegionGrid, pixel_scaling_for, small_cnn

    if ours.encoder_name != "small_cnn":
        cnn = keras.models.clone_model(ours.cnn)
        cnn.trainable = ours.fine_tune
    else:
        cnn = small_cnn(ours.image_size, ours.cnn_filters)
    scaling = PixelScaling(pixel_scaling_for(ours.encoder_name))
    regions = RegionGrid(ours.feature_dim)
    trains_cnn = ours.fine_tune or ours.encoder_name == "small_cnn"

    def encode(inputs, training):
        if "features" in inputs:  # a frozen backbone's cached feature maps
            memory = regions(inputs["features"])
        else:
            memory = regions(cnn(scaling(inputs["image"]), training=training and trains_cnn))
        return memory, tf.ones(tf.shape(memory)[:2], tf.bool)

    return BaselineModel(encode, _decoder_like(ours), [cnn, regions])


def chatbot_baseline(ours):
    """A baseline of a `Seq2Seq`: embedding and (bi)LSTM encoder as ours, our decoder's sizes."""
    e = ours.encoder
    embedding = keras.layers.Embedding(e.vocabulary_size, e.embedding_dim)
    recurrent = []
    for _ in range(e.num_layers):
        layer = keras.layers.LSTM(e.units, return_sequences=True)
        recurrent.append(keras.layers.Bidirectional(layer) if e.bidirectional else layer)
    embedding_dropout = keras.layers.Dropout(e.dropout)

    def encode(inputs, training):
        ids = inputs["source"]
        mask = ids != PAD_ID
        x = embedding_dropout(embedding(ids), training=training)
        for layer in recurrent:
            x = layer(x, mask=mask, training=training)
        return x, mask

    return BaselineModel(encode, _decoder_like(ours), [embedding, *recurrent])


def baseline_of(ours, inputs):
    """The tutorial-style baseline of `ours` with `ours`'s weights."""
    make = captioner_baseline if hasattr(ours, "cnn") else chatbot_baseline
    model = make(ours)
    copy_weights(ours, model, inputs)
    return model


def copy_weights(ours, baseline, inputs) -> None:
    """Loads every weight of `ours` into `baseline` (both built on `inputs` first)."""
    ours(inputs)
    memory, mask = baseline.encode(inputs)
    hidden = baseline.decoder.initial_state(memory, mask)
    baseline.decoder(inputs["decoder_inputs"][:, 0], hidden, memory, mask)
    for source, target in _same_layers(ours, baseline):
        target.set_weights(source.get_weights())


def copy_weights_back(baseline, ours) -> None:
    """Loads every weight of a trained `baseline` into `ours` (as `copy_weights` built them),
    so that the baseline can be measured by our in-graph search and metrics."""
    for ours_layer, baseline_layer in _same_layers(ours, baseline):
        ours_layer.set_weights(baseline_layer.get_weights())


def _same_layers(ours, baseline) -> list[tuple]:
    """(layer of ours, layer of the baseline) pairs that hold the same weights."""
    if hasattr(ours, "cnn"):
        pairs = [(ours.cnn, baseline.encoder_layers[0]), (ours.regions, baseline.encoder_layers[1])]
    else:
        pairs = list(
            zip([ours.encoder.embedding, *ours.encoder.recurrent_layers], baseline.encoder_layers)
        )
    d, b = ours.decoder, baseline.decoder
    return pairs + [
        (d.embedding, b.embedding),
        (d.cells[0], b.lstm),
        (d.attention.query_projection, b.attention.W1),
        (d.attention.key_projection, b.attention.W2),
        (d.attention.energy, b.attention.V),
        (d.bridge, b.bridge),
        (d.output_projection, b.fc),
    ]


# === Training, tutorial style ===


def teacher_forced_loss(model: BaselineModel, inputs, labels, training=False):
    """Our masked cross-entropy (mean over real tokens), one Python iteration per time step.

    Inside a `tf.function` the loop unrolls: the graph holds `T` copies of the decoder step.
    """
    decoder_inputs = inputs["decoder_inputs"]
    memory, mask = model.encode(inputs, training=training)
    hidden = model.decoder.initial_state(memory, mask)
    loss_sum = 0.0
    for t in range(decoder_inputs.shape[1]):
        logits, hidden, _ = model.decoder(
            decoder_inputs[:, t], hidden, memory, mask, training=training
        )
        real = tf.cast(labels[:, t] != PAD_ID, tf.float32)
        per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels[:, t], tf.cast(logits, tf.float32)
        )
        loss_sum += tf.reduce_sum(per_token * real)
    return loss_sum / tf.maximum(tf.reduce_sum(tf.cast(labels != PAD_ID, tf.float32)), 1.0)


def make_train_step(model: BaselineModel, optimizer):
    """`train_step(inputs, labels) -> loss`: a plain `tf.function` around the unrolled loss."""

    @tf.function
    def train_step(inputs, labels):
        with tf.GradientTape() as tape:
            loss = teacher_forced_loss(model, inputs, labels, training=True)
        variables = model.trainable_variables
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        return loss

    return train_step


# === Greedy decoding, tutorial style ===


def greedy_decode(model: BaselineModel, inputs, max_length: int) -> np.ndarray:
    """Eager, one token per Python iteration; stops when every row has emitted the end token.

    Padding and start are never chosen (as in `shared/search.py`), so with the same weights the
    tokens equal ours. Returns int32 `(batch, steps)`, padding after each row's end token.
    """
    memory, mask = model.encode(inputs, training=False)
    hidden = model.decoder.initial_state(memory, mask)
    batch = int(memory.shape[0])
    dec_input = tf.fill([batch], START_ID)
    finished = np.zeros(batch, dtype=bool)
    result = []
    for _ in range(max_length):
        logits, hidden, _ = model.decoder(dec_input, hidden, memory, mask)
        logits = logits.numpy()
        logits[:, [PAD_ID, START_ID]] = -np.inf
        predicted_id = logits.argmax(-1).astype(np.int32)
        predicted_id[finished] = PAD_ID
        result.append(predicted_id)
        finished |= predicted_id == END_ID
        if finished.all():
            break
        dec_input = tf.constant(predicted_id)
    return np.stack(result, axis=1)


# === Equivalence check ===


def main(argv=None) -> None:
    from benchmarks import setups
    from shared.metrics import MaskedCrossEntropy

    args = common.parser(__doc__).parse_args(argv)
    rows = []
    for app in ("captioner", "chatbot"):
        size = setups.QUICK if args.quick else setups.FULL
        ours, batch_list = setups.ours_and_batches(app, "chatterbot", size, count=1)
        inputs, labels = batch_list[0]
        baseline = baseline_of(ours, inputs)
        ours_loss = float(MaskedCrossEntropy()(labels, ours(inputs)))
        baseline_loss = float(tf.function(teacher_forced_loss)(baseline, inputs, labels))
        one = {k: v[:1] for k, v in inputs.items()}
        max_length = 12
        ours_tokens = setups.ours_greedy_tokens(ours, one, max_length)
        base_tokens = greedy_decode(baseline, one, max_length)
        same = bool(np.array_equal(ours_tokens[:, : base_tokens.shape[1]], base_tokens))
        rows.append(
            {
                "label": app,
                "ours_loss": ours_loss,
                "baseline_loss": baseline_loss,
                "same_greedy_tokens": same,
            }
        )
    common.report(
        "baseline",
        args,
        rows,
        common.columns(
            """
            label              | model
            ours_loss          | ours: loss at init     | .5f
            baseline_loss      | baseline: loss at init | .5f
            same_greedy_tokens | same greedy tokens
            """
        ),
    )


if __name__ == "__main__":
    main()
