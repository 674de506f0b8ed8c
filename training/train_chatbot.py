"""Train, evaluate and export a chatbot (or any sequence-to-sequence model on text pairs).

    python -m training.train_chatbot                                  # English ChatterBot corpus
    python -m training.train_chatbot --data chatterbot:chinese --mode char --run-dir runs/zh
    python -m training.train_chatbot --data reverse:num=20000,min_len=1,max_len=30 \\
        --holdout 0.1 --run-dir runs/reverse
    python -m training.train_chatbot --data tsv:spa.txt --holdout 0.05 --run-dir runs/spa-eng

Steps: load the pairs; hold out a share of prompts if `--holdout` > 0 (by default the model
trains on every pair, so it knows its corpus); build source and target vocabularies; fit with
checkpoints, TensorBoard and early stopping (a killed run started again with the same command
resumes); evaluate (`training.evaluate_chatbot`); export the SavedModel to
`<run-dir>/export/chatbot/<version>/`. `--help` lists every setting.
"""

from __future__ import annotations

import functools
from pathlib import Path

from training import chatbot_pipeline as pipeline
from training import distribute, evaluate_chatbot, run
from training.chatbot_config import ChatbotConfig
from training.common import RESUMES, run_main

EXPORT_NAME = pipeline.EXPORT_NAME
# What the default run on the English ChatterBot corpus aims for: the share of its distinct
# prompts answered (greedy) with one of their reference replies.
CORPUS_TARGETS = {"corpus_recall": 0.92}
QUALITY_SAMPLES = 3  # attention heatmaps drawn after each epoch for the demo page


class ChatbotRecipe(run.Recipe):
    """The chatbot's steps of the run skeleton (`training.run.train`)."""

    config_class = ChatbotConfig
    export_name = EXPORT_NAME
    export = staticmethod(pipeline.export)

    def load_data(self, config: ChatbotConfig, evaluate: bool):
        train_pairs, val_pairs, test_pairs = pipeline.load_splits(config)
        print(
            f"pairs: {len(train_pairs)} train, {len(val_pairs)} validation, "
            f"{len(test_pairs)} held out"
        )
        return train_pairs, val_pairs, test_pairs

    def vocabularies(self, config: ChatbotConfig, data) -> dict:
        source, target = pipeline.build_vocabularies(config, data[0])
        return {"source_vocabulary.json": source, "target_vocabulary.json": target}

    def build(self, config: ChatbotConfig, data, vocabularies, run_dir):
        train_pairs, val_pairs, _ = data
        source = vocabularies["source_vocabulary.json"]
        target = vocabularies["target_vocabulary.json"]
        model = pipeline.build_model(config, source, target, train_pairs)
        retrieved = None
        if config.retrieve:  # what training shows beside each prompt: see pipeline.batches
            index = pipeline.RetrievalIndex(train_pairs, source, config)
            retrieved = index.leave_one_out(train_pairs)
        # Sharded by DATA: the pairs are in memory (from_tensor_slices), so there are no files
        # to split. Every worker builds the same shuffled, bucketed global batches (same seed)
        # and keeps its replicas' share of each; `--batch-size` stays the global batch.
        train_batches = pipeline.batches(
            train_pairs,
            model,
            config.batch_size,
            True,
            config.seed,
            retrieved,
            config.retrieved_gold_share,
        )
        val_batches = pipeline.batches(
            val_pairs or train_pairs[:256], model, config.batch_size, False, config.seed
        )
        model(next(iter(val_batches))[0])  # build every weight before BackupAndRestore restores
        return (
            model,
            distribute.shard(train_batches, distribute.DATA),
            distribute.shard(val_batches, distribute.DATA),
        )

    def monitor(self, config: ChatbotConfig) -> str:
        # Without held-out prompts the validation pairs are training pairs: loss says as much.
        # On the English ChatterBot corpus (the one measured), held-out prompts too: the validation loss is lowest after
        # a few epochs, long before the model knows its corpus, yet the model that knows its
        # corpus answers held-out prompts on topic far more often (README, held-out table).
        english = config.data == "chatterbot" or config.data.startswith("chatterbot:english")
        if config.holdout == 0 or english:
            return "loss"
        return "val_loss"

    def quality_check(self, config: ChatbotConfig, data):
        train_pairs, val_pairs, _ = data
        # With prompts held out, how it answers those; otherwise how well it knows its corpus.
        measured = val_pairs if config.holdout > 0 else train_pairs
        prompts = [pair.prompt for pair in measured[:QUALITY_SAMPLES]]

        def check(model, samples_dir: Path) -> dict:
            metrics = evaluate_chatbot.teacher_forced_recall(model, measured)
            outputs = evaluate_chatbot.reply_all(model, prompts)
            evaluate_chatbot.write_samples(outputs, samples_dir)
            samples = [
                {"image": f"{samples_dir.name}/reply_{i}.png", "text": f"{p} → {o['reply']}"}
                for i, (p, o) in enumerate(zip(prompts, outputs))
            ]
            return {"metrics": {"corpus_recall": metrics["corpus_recall"]}, "samples": samples}

        return check

    def quality_targets(self, config: ChatbotConfig) -> dict:
        built_in = config.data in ("chatterbot", "chatterbot:english") and config.holdout == 0
        return dict(CORPUS_TARGETS) if built_in else {}

    def evaluate(self, model, config: ChatbotConfig, run_dir, data):
        train_pairs, _, test_pairs = data
        return evaluate_chatbot.evaluate(model, config, run_dir, train_pairs, test_pairs)


# train(config, overwrite=False, evaluate=True) -> metrics: the whole run, as `training.run.train`.
train = functools.partial(run.train, ChatbotRecipe())


def main(argv=None) -> None:
    run.main(ChatbotRecipe(), __doc__, argv)


if __name__ == "__main__":
    run_main(main, stopped=RESUMES)
