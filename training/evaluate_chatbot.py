"""Evaluate a trained chatbot: does it know its corpus, and what does it say to the unseen?

    python -m training.evaluate_chatbot --run-dir runs/chatbot

- corpus recall: the share of distinct training prompts whose greedy reply is one of their
  reference replies (compared after the tokenizer's standardization);
- on held-out prompts (`--holdout` > 0 at training): BLEU against all references of a prompt,
  greedy and beam, perplexity, exact-sequence accuracy (the synthetic tasks' measure), and the
  number of distinct replies and distinct-1/-2 (generic-reply collapse shows as few);
- unseen prompts: replies to a fixed list of sentences that are in no corpus.

Writes `metrics.json` and attention heatmaps of sample replies to `samples/`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from chatbot.data import Pair, references_by_prompt
from chatbot.model import Seq2Seq
from shared import config as config_io
from shared.metrics import Perplexity, corpus_bleu, distinct_count, distinct_n, exact_match
from shared.plots import attention_heatmap
from shared.text import join_tokens, split_tokens
from training.chatbot_config import ChatbotConfig
from training.chatbot_pipeline import batches, load_splits
from training.common import UserError, run_main, write_json

UNSEEN_PROMPTS = (
    "What is the weather like on Mars today?",
    "Can you recommend a good book about rivers?",
    "My cat keeps sitting on my keyboard.",
    "qwertyuiop asdfgh",
    "Tell me something about penguins.",
    "Why is the sky blue?",
    "😀",
    "",
)


def reply_all(model: Seq2Seq, prompts: list[str], beam_size: int = 1, batch_size: int = 128):
    """Replies to every prompt, in batches, with the in-graph search."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)])
    def respond(texts, beam):
        return model.reply_texts(texts, beam_size=beam)

    outputs = []
    for start in range(0, len(prompts), batch_size):
        batch = respond(tf.constant(prompts[start : start + batch_size]), tf.constant(beam_size))
        batch = {name: value.numpy() for name, value in batch.items()}
        for i in range(len(batch["reply"])):
            outputs.append(
                {
                    "reply": batch["reply"][i].decode("utf-8"),
                    "reply_tokens": [t.decode() for t in batch["reply_tokens"][i] if t],
                    "input_tokens": [t.decode() for t in batch["input_tokens"][i] if t],
                    "attention": batch["attention"][i],
                }
            )
    return outputs


def normalized(model: Seq2Seq, texts: list[str]) -> list[str]:
    """Texts as the model would write them (standardized), without cutting them short."""
    return [
        t.decode("utf-8")
        for t in join_tokens(split_tokens(tf.constant(texts), model.mode), model.mode).numpy()
    ]


def corpus_recall(model: Seq2Seq, pairs: list[Pair]) -> dict:
    references = references_by_prompt(pairs)
    prompts = list(references)
    replies = [r["reply"] for r in reply_all(model, prompts)]
    flat = [ref for prompt in prompts for ref in references[prompt]]
    normal = dict(zip(flat, normalized(model, flat)))
    hits = sum(
        reply in {normal[ref] for ref in references[p]} for p, reply in zip(prompts, replies)
    )
    return {
        "prompts": len(prompts),
        "answered_with_reference": hits,
        "corpus_recall": round(hits / len(prompts), 4),
    }


def held_out(model: Seq2Seq, config: ChatbotConfig, pairs: list[Pair]) -> dict:
    references = references_by_prompt(pairs)
    prompts = list(references)
    refs = [normalized(model, references[p]) for p in prompts]
    results = {"prompts": len(prompts)}
    characters = config.mode == "char"
    for name, beam in (("greedy", 1), (f"beam{config.beam_size}", config.beam_size)):
        replies = [r["reply"] for r in reply_all(model, prompts, beam)]
        results[name] = {
            **{k: round(v, 3) for k, v in corpus_bleu(replies, refs).items()},
            "exact_match": round(exact_match(replies, refs), 4),
            "distinct_replies": distinct_count(replies),
            # Li et al. (2016): distinct uni- and bigrams over all replies, the measure of
            # generic-reply collapse that does not depend on how many prompts there are.
            "distinct_1": round(distinct_n(replies, 1, characters), 4),
            "distinct_2": round(distinct_n(replies, 2, characters), 4),
        }
    perplexity = Perplexity()
    for inputs, labels in batches(pairs, model, 128, False, 0):
        perplexity.update_state(labels, model(inputs, training=False))
    results["perplexity"] = round(float(perplexity.result()), 3)
    return results


def evaluate(model, config: ChatbotConfig, run_dir: Path, train_pairs, test_pairs) -> dict:
    results = {"corpus": corpus_recall(model, train_pairs)}
    print(f"corpus: {results['corpus']}")
    if test_pairs:
        results["held_out"] = held_out(model, config, test_pairs)
        print(f"held out: {results['held_out']}")
    unseen = reply_all(model, list(UNSEEN_PROMPTS))
    results["unseen"] = {
        "replies": {p: r["reply"] for p, r in zip(UNSEEN_PROMPTS, unseen)},
        "distinct_replies": distinct_count([r["reply"] for r in unseen]),
    }
    print(f"unseen prompts: {results['unseen']['replies']}")
    samples = [p.prompt for p in (test_pairs or train_pairs)[: config.samples]]
    write_samples(reply_all(model, samples), run_dir / "samples")
    write_json(run_dir / "metrics.json", results)
    return results


def write_samples(outputs, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, output in enumerate(outputs):
        reply_tokens = output["reply_tokens"] or ["(empty reply)"]
        input_tokens = output["input_tokens"] or ["(empty prompt)"]
        weights = np.zeros((len(reply_tokens), len(input_tokens)), np.float32)
        attention = np.asarray(output["attention"])[
            : len(output["reply_tokens"]), : len(output["input_tokens"])
        ]
        weights[: attention.shape[0], : attention.shape[1]] = attention
        attention_heatmap(weights, reply_tokens, input_tokens, path=directory / f"reply_{i}.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", default="runs/chatbot", help="the run to evaluate")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / "model.keras").is_file():
        raise UserError(
            f"No trained model in {run_dir}; train one with python -m training.train_chatbot."
        )
    config = config_io.load(ChatbotConfig, run_dir / "config.json")
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    train_pairs, _, test_pairs = load_splits(config)
    evaluate(model, config, run_dir, train_pairs, test_pairs)


if __name__ == "__main__":
    run_main(main)
