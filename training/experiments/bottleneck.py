"""Bottleneck: a fixed-size context vs attention, on the reverse task, by input length.

    python -m training.experiments bottleneck [--quick] [--out DIR]

Three decoders of the same size (same cell, units and encoder) learn to reverse sequences of
words; they differ only in how they see the encoded input:

- `init_state`: the input's summary (the mean of the encoder outputs) only sets the decoder's
  initial state (Sutskever et al., 2014);
- `every_step`: the same summary is also fed to the cell at every step (Cho et al., 2014);
- `attention`: additive attention over every encoder output, Bahdanau placement (2014).

Each is then asked to reverse unseen sequences of every test length, decoded with in-graph
greedy search. Expected (Bahdanau et al., 2014, Fig. 2): without attention, exact-sequence
accuracy and BLEU fall as inputs get longer, because one fixed-size vector must hold the whole
sequence; with attention they stay high. Writes `results.json` and `bottleneck.png`.
"""

from __future__ import annotations

from training.experiments import common

DECODERS = {
    "init_state": {"attention": "none", "placement": "init_state"},
    "every_step": {"attention": "none", "placement": "every_step"},
    "attention": {"attention": "additive", "placement": "bahdanau"},
}
EPOCHS = {"full": 10, "quick": 1}


def run(args) -> dict:
    epochs = EPOCHS["quick" if args.quick else "full"]
    task, train_pairs, test_by_length = common.reverse_data("bottleneck", args)
    configs = common.train_decoders(args, epochs, DECODERS, train_pairs, test_by_length)
    report = common.write_report("bottleneck", args, task, train_pairs, epochs, configs)
    plot(report, args.out / "bottleneck.png")
    print()
    print("exact-sequence accuracy by input length")
    print(common.accuracy_table(configs, task.lengths))
    print("\nBLEU-4 by input length")
    print(common.accuracy_table(configs, task.lengths, metric="bleu"))
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'bottleneck.png'}")
    return report


def plot(report: dict, path):
    """Accuracy and BLEU against input length, one line per decoder."""
    figure, (accuracy_axes, bleu_axes) = common.new_figure(2)
    for name, result in report["configs"].items():
        lengths = [row["length"] for row in result["by_length"]]
        accuracy_axes.plot(
            lengths, [row["accuracy"] for row in result["by_length"]], "o-", label=name
        )
        bleu_axes.plot(lengths, [row["bleu"] for row in result["by_length"]], "o-", label=name)
    accuracy_axes.set(
        xlabel="input length (words)", ylabel="exact-sequence accuracy", ylim=(-0.02, 1.02)
    )
    bleu_axes.set(xlabel="input length (words)", ylabel="BLEU-4", ylim=(-1, 101))
    accuracy_axes.set_title("Reversing a sequence: fixed context vs attention")
    for axes in (accuracy_axes, bleu_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    return common.save_figure(figure, path)
