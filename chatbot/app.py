"""The chatbot web demo: chat with the model and see which words each reply word attended to.

    python -m chatbot.app [--run-dir runs/chatbot] [--host 127.0.0.1] [--port 7860]

Why this module exists: an attention chatbot's reply is easier to trust (or debug) when you can
see, for each word it wrote, which of your words it was looking at. Below the chat, a heatmap
shows that for the last reply: rows are reply tokens, columns the tokens the model read (words
it does not know appear as [UNK]).

The demo serves the newest SavedModel in `<run-dir>/export/chatbot/` (a newer one as soon as it
appears, and the run's training progress until the first does) through its `reply`
endpoint (text in; reply, score and attention out), so it runs any exported chatbot and imports
no model code. A model trained with `--context-turns N` (the export's metadata says N; 1 for
older exports) is sent the conversation's last N turns joined by " ␞ ", built by the same
function (`chatbot.turns.context_prompt`) that built its training prompts, so its reply can
depend on what was said before. Retry (answer the last message again) and undo (take back the
last exchange) are the chat's own buttons on the last reply.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from chatbot.turns import context_prompt
from shared import serving, training_panel
from shared.plots import attention_heatmap

EXPORT_NAME = "chatbot"
ENDPOINT = "reply"
TRAIN_MODULE = "training.train_chatbot"
DEFAULT_RUN_DIR = "runs/chatbot"
MODES = ("greedy", "beam search", "sampling")
MAX_MESSAGE_CHARS = 500  # the model reads a bounded number of tokens anyway
EMPTY_REPLY = "(the model replied with nothing)"
# The export's `status` of a message (`chatbot.model.message_status`; the demo imports no model
# code): `ok` is answered; `empty` has nothing the model can read.
STATUS_OK, STATUS_EMPTY = "ok", "empty"
UNK_TOKEN = "[UNK]"  # how the export shows a word its vocabulary lacks
UNKNOWN = "unknown"  # the mark the page puts on such a word
# Messages in the English ChatterBot corpus's topics but not among its prompts (tested): what a
# visitor types is new to the model, and the examples show how it copes with that.
EXAMPLES = (
    "Hi there, how is it going?",
    "What do you know about computers?",
    "Can you tell me something funny?",
    "What food do you like?",
    "Who made you?",
)
SYNTHETIC_TASKS = ("copy", "reverse", "sort")  # `--data` sources that are exercises, not chat


@dataclass
class Decoding:
    """How the reply is searched for; the `reply` endpoint's scalar inputs."""

    beam_size: int = 1
    temperature: float = 0.0  # above 0: sample; otherwise beam search (beam 1 = greedy)
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Reply:
    """One reply, its attention over the message, and what the model could read of it."""

    text: str
    score: float
    reply_tokens: list[str]
    input_tokens: list[str]
    attention: np.ndarray  # float32 (len(reply_tokens), len(input_tokens))
    status: str = STATUS_OK  # the export's `status`: ok, empty or no_known_words
    input_words: list[str] = field(default_factory=list)  # as written; aligned with input_tokens

    def words_read(self) -> list[tuple[str, str | None]]:
        """`(word, "unknown" or None)` for each word the model read, for the page to mark."""
        words = self.input_words or self.input_tokens  # exports before `input_words`: tokens
        return [
            (word, UNKNOWN if token == UNK_TOKEN else None)
            for word, token in zip(words, self.input_tokens, strict=False)
        ]


def decoding_for(
    mode: str, beam_size: float, temperature: float, top_k: float, top_p: float, seed: float
) -> Decoding:
    """The page's settings as a `Decoding`; ValueError for an unknown mode or a bad value."""
    if mode == "greedy":
        return Decoding()
    if mode == "beam search":
        if int(beam_size) < 1:
            raise ValueError(f"The beam size must be at least 1, got {beam_size}.")
        return Decoding(beam_size=int(beam_size))
    if mode == "sampling":
        if not temperature > 0:
            raise ValueError(f"Sampling needs a temperature above 0, got {temperature}.")
        if not 0 < top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {top_p}.")
        seed = random.randrange(2**31) if seed is None or seed < 0 else int(seed) % 2**31
        return Decoding(1, float(temperature), max(0, int(top_k)), float(top_p), seed)
    raise ValueError(f"Unknown decoding mode {mode!r}; choose one of {', '.join(MODES)}.")


def context_turns_of(metadata: dict) -> int:
    """The turns of a conversation the export's model reads, from its metadata (1 if unsaid)."""
    value = metadata.get("context_turns", 1)  # exports older than the field read one turn
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"its metadata gives context_turns {value!r}, expected a positive integer")
    return value


def data_name(source: str) -> str | None:
    """What a `--data` source is called on the page (never a server path), or None."""
    kind, _, argument = source.partition(":")
    if kind == "chatterbot":
        language, _, topics = argument.partition(":")
        name = f"the {(language or 'english').capitalize()} ChatterBot corpus"
        return name + (f" (topics {topics.replace(',', ', ')})" if topics else "")
    if kind == "cornell":
        return "the Cornell Movie-Dialogs corpus"
    if kind == "tsv":
        return f"the text pairs of {Path(argument).name}"
    if kind in SYNTHETIC_TASKS:
        return f"the synthetic {kind} task (it {kind}s the words it is sent; it does not chat)"
    return None


def trained_on(metadata: dict) -> str | None:
    """One line on what the export's model was trained on, or None when its metadata does not
    say."""
    name = data_name(str(metadata.get("data", "")))
    return training_panel.trained_on_text(name, metadata, "prompt/reply pairs") if name else None


def message_text(content) -> str:
    """A chat message's text, whether its content is a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return ""
    return " ".join(
        str(part.get("text", ""))
        for part in content
        if isinstance(part, dict) and part.get("type", "text") == "text"
    )


def conversation_turns(history: list[dict]) -> list[str]:
    """The conversation's turns, oldest first; a reply shown as EMPTY_REPLY is an empty turn.

    Each turn is cut to `MAX_MESSAGE_CHARS`, as the message box cuts a new message: the history
    comes from the client and may have been written by something other than this page.
    """
    turns = []
    for message in history:
        text = message_text(message.get("content"))[:MAX_MESSAGE_CHARS]
        if message.get("role") == "assistant" and text == EMPTY_REPLY:
            text = ""
        turns.append(text)
    return turns


def last_user_message(history: list[dict]) -> int | None:
    """The index of the last message the user wrote, or None."""
    for index in range(len(history) - 1, -1, -1):
        if history[index].get("role") == "user":
            return index
    return None


# Messages whose prompts fill the two shortest length buckets of the compiled search (8 and 16
# tokens, `shared.compiled.cut_to_bucket`): what most visitors type first.
WARM_UP_MESSAGES = ("hello", "can you tell me something about the weather on a summer day")


def warm_up(model) -> None:
    """Greedy replies to `WARM_UP_MESSAGES`, so the search is compiled before a visitor asks."""
    for message in WARM_UP_MESSAGES:
        run_reply(model, message, Decoding())


def run_reply(model, message: str, decoding: Decoding) -> Reply:
    """Calls the export's `reply` endpoint on one message."""
    import tensorflow as tf

    outputs = serving.find_endpoint(model, ENDPOINT, EXPORT_NAME)(
        text=tf.constant([message]),
        beam_size=tf.constant(decoding.beam_size, tf.int32),
        temperature=tf.constant(decoding.temperature, tf.float32),
        top_k=tf.constant(decoding.top_k, tf.int32),
        top_p=tf.constant(decoding.top_p, tf.float32),
        seed=tf.constant(decoding.seed, tf.int32),
    )
    return reply_of(outputs)


def reply_of(outputs: dict, row: int = 0) -> Reply:
    """The `Reply` in row `row` of the `reply` endpoint's outputs (tensors or arrays).

    Exports older than the `status` and `input_words` outputs are read too: their message is
    taken as answered, and the page marks their [UNK] tokens instead of the words.
    """

    def strings(name: str) -> list[str]:
        return [text for text in serving.as_text(outputs[name][row]) if text]

    reply_tokens, input_tokens = strings("reply_tokens"), strings("input_tokens")
    attention = np.asarray(outputs["attention"][row])[: len(reply_tokens), : len(input_tokens)]
    return Reply(
        text=serving.as_text(outputs["reply"])[row],
        score=float(np.asarray(outputs["score"])[row]),
        reply_tokens=reply_tokens,
        input_tokens=input_tokens,
        attention=attention,
        status=serving.as_text(outputs["status"])[row] if "status" in outputs else STATUS_OK,
        input_words=strings("input_words") if "input_words" in outputs else [],
    )


def heatmap_picture(reply: Reply) -> Image.Image | None:
    """The reply's attention as a picture, or None when either side has no tokens."""
    if not reply.reply_tokens or not reply.input_tokens:
        return None
    png = attention_heatmap(
        reply.attention, reply.reply_tokens, reply.input_tokens, title="attention of the reply"
    )
    return Image.open(io.BytesIO(png))


def build_app(
    run_dir: str | Path = DEFAULT_RUN_DIR,
    delete_cache: tuple[int, int] | None = serving.DELETE_CACHE,
    job: Callable[[], training_panel.Job | None] | None = None,
) -> gr.Blocks:
    """The chat page for the newest export in `run_dir` (or a "no model" notice and the run's
    training, followed live).

    `delete_cache` is `(check every, delete after)` in seconds for the heatmap pictures;
    `job()` says what the demo knows of the process training this model (`make demo`).
    """
    live = serving.LiveExport(
        run_dir, EXPORT_NAME, TRAIN_MODULE, ENDPOINT, context_turns_of, warm_up
    )

    def answer(history, message, settings) -> Reply:
        """The model's reply to `message` after the conversation `history`; gr.Error if none."""
        served = live.for_request()
        if served.model is None:
            raise gr.Error(served.problem.page)
        prompt = context_prompt(conversation_turns(history) + [message], served.settings)
        try:
            return run_reply(served.model, prompt, decoding_for(*settings))
        except ValueError as error:
            raise gr.Error(str(error)) from error
        except Exception as error:  # TensorFlow errors and the like (Gradio logs them)
            raise gr.Error(
                "The model could not answer that message; try a shorter or plainer one."
            ) from error

    def exchange(message, reply):
        return [
            {"role": "user", "content": message},
            {"role": "assistant", "content": reply.text or EMPTY_REPLY},
        ]

    def respond(message, history, mode, beam_size, temperature, top_k, top_p, seed):
        """-> (cleared text box, conversation with the new turn, heatmap of the reply, the
        words the model read of the message, unknown ones marked)."""
        settings = (mode, beam_size, temperature, top_k, top_p, seed)
        history = list(history or [])
        message = (message or "").strip()[:MAX_MESSAGE_CHARS]
        if not message:
            gr.Warning("Type a message first: the box is empty.")
            return "", history, gr.skip(), gr.skip()
        reply = answer(history, message, settings)
        if reply.status == STATUS_EMPTY:  # e.g. only invisible characters: keep it in the box
            gr.Warning("The model can read nothing in that message: type some words.")
            return message, history, gr.skip(), gr.skip()
        return "", history + exchange(message, reply), heatmap_picture(reply), reply.words_read()

    def retry(history, mode, beam_size, temperature, top_k, top_p, seed):
        """-> (conversation with its last message answered again, heatmap of the new reply,
        the words read)."""
        settings = (mode, beam_size, temperature, top_k, top_p, seed)
        history = list(history or [])
        last = last_user_message(history)
        if last is None:
            gr.Warning("There is no message to answer again yet.")
            return history, gr.skip(), gr.skip()
        message = message_text(history[last]["content"])
        reply = answer(history[:last], message, settings)
        return history[:last] + exchange(message, reply), heatmap_picture(reply), reply.words_read()

    def undo(history):
        """-> (the last message back in the box, the conversation before it, no heatmap, no
        words read)."""
        history = list(history or [])
        last = last_user_message(history)
        if last is None:
            return gr.skip(), history, gr.skip(), gr.skip()
        return message_text(history[last]["content"]), history[:last], None, []

    def show_settings(mode):
        return gr.Slider(visible=mode == "beam search"), gr.Group(visible=mode == "sampling")

    with gr.Blocks(title="Glimpse chatbot", delete_cache=delete_cache) as demo:
        context_turns = live.served.settings
        read = (
            f"the conversation's last {context_turns} turns, joined by ␞"
            if context_turns > 1
            else "your message"
        )
        gr.Markdown(
            "## Glimpse: chatbot\n"
            "Type a message and press Enter, or pick an example. Under the last reply, ↻ answers "
            "your message again and ↶ takes it back. The heatmap shows, for the last reply, how "
            f"much each reply word (rows) attended to each word the model read (columns): {read}."
        )
        training_panel.follow_run(live, trained_on, job, api_name="chatbot_status")
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation", height=360, elem_id="conversation")
                message = gr.Textbox(
                    label="Message",
                    placeholder="Say something and press Enter",
                    max_length=MAX_MESSAGE_CHARS,
                    elem_id="message",
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.ClearButton(value="Clear")
                gr.Examples([[example] for example in EXAMPLES], message, api_visibility="private")
            with gr.Column(scale=2):
                mode = gr.Radio(list(MODES), value="greedy", label="Decoding")
                beam_size = gr.Slider(2, 8, value=4, step=1, label="Beam size", visible=False)
                with gr.Group(visible=False) as sampling:
                    temperature = gr.Slider(0.1, 2.0, value=0.8, step=0.05, label="Temperature")
                    top_k = gr.Slider(0, 100, value=0, step=1, label="Top-k (0 = no limit)")
                    top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
        words_read = gr.HighlightedText(
            label="What the model read of your last message (words it does not know are marked)",
            color_map={UNKNOWN: "red"},
            show_legend=True,
            elem_id="words-read",
        )
        heatmap = gr.Image(
            label="Attention of the last reply", format="png", type="pil", elem_id="heatmap"
        )
        clear.add([message, chat, heatmap, words_read])

        inputs = [message, chat, mode, beam_size, temperature, top_k, top_p, seed]
        outputs = [message, chat, heatmap, words_read]
        message.submit(respond, inputs, outputs, api_name="chat")
        send.click(respond, inputs, outputs, api_visibility="private")
        chat.retry(retry, inputs[1:], [chat, heatmap, words_read], api_name="retry")
        chat.undo(undo, chat, outputs, api_name="undo")
        mode.change(show_settings, mode, [beam_size, sampling], api_visibility="private")
    return demo


def main(argv=None) -> None:
    serving.serve_run_dir(__doc__.split("\n\n")[0], DEFAULT_RUN_DIR, build_app, argv)


if __name__ == "__main__":
    main()
