"""Cells: SimpleRNN vs GRU vs LSTM decoders (with attention), and their gradients through time.

    python -m training.experiments cells [--quick] [--out DIR]

Three attention decoders that differ only in their recurrent cell learn the reverse task with
the same data and steps. For each the run records:

- the learning curve: training loss and token accuracy after every epoch;
- exact-sequence accuracy and BLEU by input length (in-graph greedy decoding);
- gradients through time: on one batch of test sequences of a single length, the norm of
  ∂loss_t / ∂s_0, the gradient of the loss at step t with respect to the decoder's initial
  state, for every t, before training and after. It is the signal that step t's error sends
  back across t recurrent steps. A SimpleRNN multiplies it by its recurrent Jacobian at every
  step, so it vanishes geometrically once the weights make that Jacobian contract; the gates of
  GRU and LSTM give it an additive path (Hochreiter & Schmidhuber, 1997; Cho et al., 2014).
  Both ends are measured because initialisation matters: Keras starts SimpleRNN's recurrent
  weights orthogonal (norm-preserving), while half-open gates make a fresh GRU's or LSTM's
  gradient decay step by step until training opens them.

Writes `results.json` and `cells.png` (learning curves, accuracy by length, gradient norms).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from shared.metrics import token_cross_entropy
from training.chatbot_pipeline import batches
from training.experiments import common

CELLS = ("rnn", "gru", "lstm")
CELL_NAMES = {"rnn": "SimpleRNN", "gru": "GRU", "lstm": "LSTM"}
EPOCHS = {"full": 8, "quick": 2}
PROBE_BATCH = {"full": 16, "quick": 4}


def gradient_through_time(model, pairs) -> list[float]:
    """‖∂loss_t / ∂s_0‖ for every decoder step t, averaged over `pairs` (all of one length).

    One backward pass gives every step's gradient: the batch is copied once per step and copy
    t keeps only the loss of step t. Copies never interact, so the gradient that reaches copy
    t's initial state comes from step t alone. For an LSTM, s_0 is both h_0 and c_0.
    """
    inputs, labels = next(iter(batches(pairs, model, len(pairs), False, 0)))
    batch, steps = labels.shape
    decoder = model.decoder

    def norms(source, decoder_inputs, labels):
        source = tf.tile(source, [steps, 1])  # copy c is rows c*batch .. (c+1)*batch-1
        decoder_inputs = tf.tile(decoder_inputs, [steps, 1])
        labels = tf.tile(labels, [steps, 1])
        keep_step = tf.one_hot(tf.range(steps * batch) // batch, steps)  # (copies*batch, steps)
        memory, mask = model.encoder(source, training=False)
        state = decoder.initial_state(decoder.prepare_memory(memory, mask))
        flat_state = tf.nest.flatten(state)
        with tf.GradientTape() as tape:
            tape.watch(flat_state)
            logits, _ = decoder(
                decoder_inputs,
                memory,
                mask,
                initial_state=tf.nest.pack_sequence_as(state, flat_state),
                training=False,
            )
            loss = tf.reduce_sum(token_cross_entropy(labels, logits) * keep_step)
        gradients = tape.gradient(loss, flat_state)
        squared = tf.add_n([tf.reduce_sum(tf.square(g), axis=-1) for g in gradients])
        return tf.reduce_mean(tf.reshape(tf.sqrt(squared), [steps, batch]), axis=1)

    values = norms(inputs["source"], inputs["decoder_inputs"], labels).numpy()
    return [float(f"{v:.4g}") for v in values]


def run(args) -> dict:
    mode = "quick" if args.quick else "full"
    task, train_pairs, test_by_length = common.reverse_data("cells", args)
    probe_length = task.lengths[-1]
    probe_pairs = test_by_length[probe_length][: PROBE_BATCH[mode]]

    configs = {}
    for cell in CELLS:
        name = CELL_NAMES[cell]
        config = common.seq2seq_config(
            args.quick,
            seed=args.seed,
            epochs=EPOCHS[mode],
            cell=cell,
            attention="additive",
            placement="bahdanau",
        )
        # The untrained model is `build`'s deterministic starting point, so measuring it here
        # and training a fresh build in `train_and_measure` start from the same weights.
        initial = gradient_through_time(common.build(config, train_pairs), probe_pairs)
        entry, model, _ = common.train_and_measure(name, config, train_pairs, test_by_length)
        entry["gradient_norms"] = {
            "initial": initial,
            "trained": gradient_through_time(model, probe_pairs),
        }
        configs[name] = entry

    probe = {
        "length": probe_length,
        "sequences": len(probe_pairs),
        "steps": probe_length + 1,
        "quantity": "mean over sequences of ||d loss_t / d s_0||, t = 1..steps",
    }
    report = common.write_report(
        "cells", args, task, train_pairs, EPOCHS[mode], configs, gradient_probe=probe
    )
    plot(report, args.out / "cells.png")
    print()
    columns = {
        "final loss": lambda entry: entry["training"]["loss"][-1],
        "grad T/1 untrained": lambda entry: _last_over_first(entry["gradient_norms"]["initial"]),
        "trained": lambda entry: _last_over_first(entry["gradient_norms"]["trained"]),
    }
    print(common.summary_table("cell", configs, columns))
    print("(grad T/1: ||d loss_T / d s_0|| / ||d loss_1 / d s_0||, T = the last decoder step)")
    print("\nexact-sequence accuracy by input length")
    print(common.accuracy_table(configs, task.lengths))
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'cells.png'}")
    return report


def _last_over_first(norms: list[float]) -> str:
    """How much of the gradient is left after T steps, relative to after one, e.g. "3.1e-05"."""
    return f"{norms[-1] / norms[0]:.2g}" if norms[0] else "nan"


def plot(report: dict, path):
    """Learning curves, accuracy by length, and gradient norms through time (log scale)."""
    figure, (loss_axes, accuracy_axes, gradient_axes) = common.new_figure(3)
    for index, (name, result) in enumerate(report["configs"].items()):
        colour = f"C{index}"
        losses = result["training"]["loss"]
        loss_axes.plot(range(1, len(losses) + 1), losses, "o-", color=colour, label=name)
        lengths = [row["length"] for row in result["by_length"]]
        accuracies = [row["accuracy"] for row in result["by_length"]]
        accuracy_axes.plot(lengths, accuracies, "o-", color=colour, label=name)
        for stage, style in (("initial", "--"), ("trained", "-")):
            norms = np.maximum(np.asarray(result["gradient_norms"][stage]), 1e-30)
            gradient_axes.semilogy(
                range(1, len(norms) + 1), norms, style, color=colour, label=f"{name} ({stage})"
            )
    loss_axes.set(xlabel="epoch", ylabel="training loss", title="Learning curves")
    accuracy_axes.set(
        xlabel="input length (words)",
        ylabel="exact-sequence accuracy",
        ylim=(-0.02, 1.02),
        title="Accuracy by length",
    )
    gradient_axes.set(
        xlabel="decoder step t",
        ylabel="‖∂ loss_t / ∂ s_0‖",
        title=f"Gradient through time (length {report['gradient_probe']['length']})",
    )
    for axes in (loss_axes, accuracy_axes, gradient_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return common.save_figure(figure, path)
