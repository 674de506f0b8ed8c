"""Scores: additive vs dot vs general vs concat attention, and Bahdanau vs Luong placement.

    python -m training.experiments scores [--quick] [--out DIR]

Five attention decoders of the same size learn the reverse task (up to 20 words) with the same
data and steps: the four scores of `shared.attention` with Bahdanau's placement (attend with the
previous state, feed the context to the cell), and the general score with Luong's placement
(run the cell, then attend with the new state; input feeding on), which is the pairing of Luong
et al. (2015) and differs from `general` only in placement. For each the run records:

- exact-sequence accuracy, overall and by input length (in-graph greedy decoding);
- training speed: examples per second over the epochs after the first (which also traces);
- attention sharpness: the mean entropy of the attention weights of every emitted token, in
  nats and divided by log(input length) (0: all weight on one word, 1: uniform). Reversing
  needs one input word per output word, so a decoder that has learned the task attends sharply.

Writes `results.json` and `scores.png`.
"""

from __future__ import annotations

from training.experiments import common

DECODERS = {
    "additive": {"attention": "additive", "placement": "bahdanau"},
    "dot": {"attention": "dot", "placement": "bahdanau"},
    "general": {"attention": "general", "placement": "bahdanau"},
    "concat": {"attention": "concat", "placement": "bahdanau"},
    "luong general": {"attention": "general", "placement": "luong"},
}
EPOCHS = {"full": 6, "quick": 1}
# Five attention decoders must train in the time the other experiments give three, so this one
# reverses sequences of up to 20 words (the others: 30).
MAX_LEN = 20


def run(args) -> dict:
    epochs = EPOCHS["quick" if args.quick else "full"]
    task, train_pairs, test_by_length = common.reverse_data("scores", args, max_len=MAX_LEN)
    configs = common.train_decoders(args, epochs, DECODERS, train_pairs, test_by_length)
    report = common.write_report("scores", args, task, train_pairs, epochs, configs)
    plot(report, args.out / "scores.png")
    print()
    columns = {
        "BLEU-4 (longest)": lambda entry: entry["by_length"][-1]["bleu"],
        "entropy": lambda entry: entry["mean_entropy"],
        "normalised": lambda entry: entry["normalised_entropy"],
    }
    print(common.summary_table("decoder", configs, columns))
    print("\nexact-sequence accuracy by input length")
    print(common.accuracy_table(configs, task.lengths))
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'scores.png'}")
    return report


def plot(report: dict, path):
    """Bars of accuracy, training speed and attention entropy; accuracy by length."""
    configs = report["configs"]
    names = list(configs)
    colours = [f"C{i}" for i in range(len(names))]
    figure, (accuracy_axes, speed_axes, entropy_axes, length_axes) = common.new_figure(
        2, 2, panel_size=(6.0, 3.8)
    )
    bars = (
        (accuracy_axes, "accuracy", "exact-sequence accuracy (all lengths)"),
        (speed_axes, None, "training examples / s"),
        (entropy_axes, "normalised_entropy", "attention entropy / log(input length)"),
    )
    for axes, key, label in bars:
        values = [
            (result[key] if key else result["training"]["examples_per_second"]) or 0.0
            for result in configs.values()
        ]
        axes.bar(range(len(names)), values, color=colours)
        axes.set_xticks(range(len(names)), labels=names, rotation=20, ha="right")
        axes.set_ylabel(label)
        axes.grid(axis="y", alpha=0.3)
    for colour, (name, result) in zip(colours, configs.items()):
        lengths = [row["length"] for row in result["by_length"]]
        length_axes.plot(
            lengths,
            [row["accuracy"] for row in result["by_length"]],
            "o-",
            color=colour,
            label=name,
        )
    length_axes.set(
        xlabel="input length (words)", ylabel="exact-sequence accuracy", ylim=(-0.02, 1.02)
    )
    length_axes.grid(alpha=0.3)
    length_axes.legend(fontsize=8)
    accuracy_axes.set_title("Attention scores and placements on the reverse task")
    return common.save_figure(figure, path)
