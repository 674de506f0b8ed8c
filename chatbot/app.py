"""The chatbot web demo: chat with the model and see which words each reply word attended to.

    python -m chatbot.app [--run-dir runs/chatbot] [--host 127.0.0.1] [--port 7860]

Why this module exists: an attention chatbot's reply is easier to trust (or debug) when you can
see, for each word it wrote, which of your words it was looking at. Below the chat, a heatmap
shows that for the last reply: rows are reply tokens, columns the tokens the model read (words
it does not know appear as [UNK]).

The demo serves the newest SavedModel in `<run-dir>/export/chatbot/` through its `reply`
endpoint (text in; reply, score and attention out), so it runs any exported chatbot and imports
no model code. Each message is answered on its own: the endpoint takes one message, not the
conversation.
"""

from __future__ import annotations

import argparse
import io
import random
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from shared import serving
from shared.plots import attention_heatmap

EXPORT_NAME = "chatbot"
TRAIN_MODULE = "training.train_chatbot"
DEFAULT_RUN_DIR = "runs/chatbot"
MODES = ("greedy", "beam search", "sampling")
MAX_MESSAGE_CHARS = 500  # the model reads a bounded number of tokens anyway
EMPTY_REPLY = "(the model replied with nothing)"


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
    """One reply and its attention over the message."""

    text: str
    score: float
    reply_tokens: list[str]
    input_tokens: list[str]
    attention: np.ndarray  # float32 (len(reply_tokens), len(input_tokens))


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


def reply_endpoint(model):
    """The `reply` function of a loaded SavedModel; ValueError when it has none."""
    endpoint = getattr(model, "reply", None)
    if endpoint is None:
        endpoint = getattr(model, "signatures", {}).get("reply")
    if endpoint is None:
        raise ValueError("the SavedModel has no `reply` endpoint; is it a chatbot export?")
    return endpoint


def run_reply(model, message: str, decoding: Decoding) -> Reply:
    """Calls the export's `reply` endpoint on one message."""
    import tensorflow as tf

    outputs = reply_endpoint(model)(
        text=tf.constant([message]),
        beam_size=tf.constant(decoding.beam_size, tf.int32),
        temperature=tf.constant(decoding.temperature, tf.float32),
        top_k=tf.constant(decoding.top_k, tf.int32),
        top_p=tf.constant(decoding.top_p, tf.float32),
        seed=tf.constant(decoding.seed, tf.int32),
    )
    reply_tokens = [token for token in serving.as_text(outputs["reply_tokens"][0]) if token]
    input_tokens = [token for token in serving.as_text(outputs["input_tokens"][0]) if token]
    attention = outputs["attention"][0].numpy()[: len(reply_tokens), : len(input_tokens)]
    return Reply(
        text=serving.as_text(outputs["reply"])[0],
        score=float(outputs["score"].numpy()[0]),
        reply_tokens=reply_tokens,
        input_tokens=input_tokens,
        attention=attention,
    )


def heatmap_picture(reply: Reply) -> Image.Image | None:
    """The reply's attention as a picture, or None when either side has no tokens."""
    if not reply.reply_tokens or not reply.input_tokens:
        return None
    png = attention_heatmap(
        reply.attention, reply.reply_tokens, reply.input_tokens, title="attention of the reply"
    )
    return Image.open(io.BytesIO(png))


def build_app(run_dir: str | Path = DEFAULT_RUN_DIR) -> gr.Blocks:
    """The chat page for the newest export in `run_dir` (or a "no model" notice)."""
    model, problem = None, None
    version_dir = serving.find_export(run_dir, EXPORT_NAME)
    if version_dir is None:
        problem = serving.no_model_message(run_dir, EXPORT_NAME, TRAIN_MODULE)
    else:
        try:
            model = serving.load_export(version_dir).model
            reply_endpoint(model)
        except Exception as error:  # any failure to load is reported on the page instead
            model, problem = None, serving.load_failed_message(version_dir, error, TRAIN_MODULE)
    if problem:
        print(problem, flush=True)

    def respond(message, history, mode, beam_size, temperature, top_k, top_p, seed):
        """-> (cleared text box, conversation with the new turn, heatmap of the reply)."""
        history = list(history or [])
        message = (message or "").strip()[:MAX_MESSAGE_CHARS]
        if not message:
            gr.Warning("Type a message first: the box is empty.")
            return "", history, gr.skip()
        if model is None:
            raise gr.Error(problem)
        try:
            reply = run_reply(
                model, message, decoding_for(mode, beam_size, temperature, top_k, top_p, seed)
            )
        except ValueError as error:
            raise gr.Error(str(error)) from error
        except Exception as error:  # TensorFlow errors and the like
            raise gr.Error(
                f"The model could not answer that message ({type(error).__name__}); "
                "try a shorter or plainer one."
            ) from error
        history += [
            {"role": "user", "content": message},
            {"role": "assistant", "content": reply.text or EMPTY_REPLY},
        ]
        return "", history, heatmap_picture(reply)

    def show_settings(mode):
        return gr.Slider(visible=mode == "beam search"), gr.Group(visible=mode == "sampling")

    with gr.Blocks(title="Glimpse chatbot") as demo:
        gr.Markdown(
            "## Glimpse: chatbot\n"
            "Type a message and press Enter. The heatmap shows, for the last reply, how much "
            "each reply word (rows) attended to each word of your message (columns)."
        )
        if problem:
            gr.Markdown(f"**{problem}**", elem_id="problem")
        elif version_dir is not None:
            gr.Markdown(f"Model: `{version_dir}`")
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
            with gr.Column(scale=2):
                mode = gr.Radio(list(MODES), value="greedy", label="Decoding")
                beam_size = gr.Slider(2, 8, value=4, step=1, label="Beam size", visible=False)
                with gr.Group(visible=False) as sampling:
                    temperature = gr.Slider(0.1, 2.0, value=0.8, step=0.05, label="Temperature")
                    top_k = gr.Slider(0, 100, value=0, step=1, label="Top-k (0 = no limit)")
                    top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
        heatmap = gr.Image(
            label="Attention of the last reply", format="png", type="pil", elem_id="heatmap"
        )
        clear.add([message, chat, heatmap])

        inputs = [message, chat, mode, beam_size, temperature, top_k, top_p, seed]
        outputs = [message, chat, heatmap]
        message.submit(respond, inputs, outputs, api_name="chat")
        send.click(respond, inputs, outputs, api_visibility="private")
        mode.change(show_settings, mode, [beam_size, sampling], api_visibility="private")
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="the training run to serve")
    serving.add_launch_arguments(parser)
    args = parser.parse_args(argv)
    serving.serve_forever(build_app(args.run_dir), args.host, args.port, args.share)


if __name__ == "__main__":
    main()
