"""Plain NumPy versions of attention, the decoder and beam search, written from the papers.

This is the outside reference for `test_attention.py`, `test_decoder_reference.py` and
`test_beam_reference.py`: comparing `call` with `step` only shows that two paths of the same code
agree, so these functions are written again from the equations, in float64, one example at a
time, and share no code with `shared/`.

Weights come in as a dict `{path: array}`: the Keras variable paths without the layer's own
name (`"lstm_0/kernel"`, `"attention/energy/kernel"`), read from the built layer's variables.
What is taken from Keras is only how it lays out those arrays:

- a Dense kernel is `(inputs, outputs)`, so a layer computes `x K + b`;
- a cell's kernel `(inputs, gates * units)`, recurrent kernel `(units, gates * units)` and bias
  hold the gates side by side: LSTM `[i, f, g, o]`, GRU `[z, r, h]`; the GRU with
  `reset_after=True` keeps two biases `(2, 3 * units)`, the input's and the recurrent one's.

Decoder placements (Sutskever et al., 2014; Cho et al., 2014; Bahdanau et al., 2014; Luong et
al., 2015), for one decoding step with previous token y, state s_{t-1} and memory h_1 … h_S:

- `init_state`: s_0 = bridge(C), where C is the mean of the unmasked memory; x_t = E[y].
- `every_step`: as `init_state`, and C is also fed every step: x_t = [E[y]; C];
  the output reads [s_t; C].
- `bahdanau`: c_t = attend(s_{t-1}) with s_{t-1} the top layer's hidden state;
  x_t = [E[y]; c_t]; the output reads [s_t; c_t].
- `luong`: x_t = E[y] (with input feeding [E[y]; h~_{t-1}], h~_0 = 0); the cells run first;
  c_t = attend(h_t); h~_t = tanh(W_c [c_t; h_t]) (no bias); the output reads h~_t.

Stacked layers: layer 0 reads x_t, layer l > 0 reads layer l-1's new hidden state; attention
reads the top layer. The bridge is one tanh layer whose output is cut into every layer's initial
state in order (layer 0 h, [layer 0 c,] layer 1 h, …). Logits = features W_o + b_o.
"""

from __future__ import annotations

import itertools

import numpy as np

# === Recurrent cells ===


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_step(x, h, c, kernel, recurrent_kernel, bias):
    """Hochreiter & Schmidhuber (1997), with a forget gate:

    i = σ(x W_i + h U_i + b_i), f = σ(x W_f + h U_f + b_f),
    g = tanh(x W_g + h U_g + b_g), o = σ(x W_o + h U_o + b_o),
    c' = f ⊙ c + i ⊙ g, h' = o ⊙ tanh(c').
    """
    W_i, W_f, W_g, W_o = np.split(kernel, 4, axis=-1)
    U_i, U_f, U_g, U_o = np.split(recurrent_kernel, 4, axis=-1)
    b_i, b_f, b_g, b_o = np.split(bias, 4, axis=-1)
    i = sigmoid(x @ W_i + h @ U_i + b_i)
    f = sigmoid(x @ W_f + h @ U_f + b_f)
    g = np.tanh(x @ W_g + h @ U_g + b_g)
    o = sigmoid(x @ W_o + h @ U_o + b_o)
    c = f * c + i * g
    return o * np.tanh(c), c


def gru_step(x, h, kernel, recurrent_kernel, bias):
    """Cho et al. (2014), with the reset gate applied after the recurrent product (Keras's
    `reset_after=True`, cuDNN's GRU):

    z = σ(x W_z + b_z + h U_z + b'_z), r = σ(x W_r + b_r + h U_r + b'_r),
    h~ = tanh(x W_h + b_h + r ⊙ (h U_h + b'_h)), h' = z ⊙ h + (1 - z) ⊙ h~.
    """
    W_z, W_r, W_h = np.split(kernel, 3, axis=-1)
    U_z, U_r, U_h = np.split(recurrent_kernel, 3, axis=-1)
    b_z, b_r, b_h = np.split(bias[0], 3)  # the input's bias
    c_z, c_r, c_h = np.split(bias[1], 3)  # the recurrent product's bias
    z = sigmoid(x @ W_z + b_z + h @ U_z + c_z)
    r = sigmoid(x @ W_r + b_r + h @ U_r + c_r)
    candidate = np.tanh(x @ W_h + b_h + r * (h @ U_h + c_h))
    return z * h + (1.0 - z) * candidate


def simple_rnn_step(x, h, kernel, recurrent_kernel, bias):
    """Elman (1990): h' = tanh(x W + h U + b)."""
    return np.tanh(x @ kernel + h @ recurrent_kernel + bias)


STATES_PER_LAYER = {"lstm": 2, "gru": 1, "rnn": 1}


def cell_step(cell: str, weights: dict, x, state: list):
    """One step of the cell named `cell` (`"lstm"`, `"gru"`, `"rnn"`) with `weights` holding
    its `kernel`, `recurrent_kernel` and `bias`: `(output h, new state list)`."""
    arrays = (weights["kernel"], weights["recurrent_kernel"], weights["bias"])
    if cell == "lstm":
        h, c = lstm_step(x, state[0], state[1], *arrays)
        return h, [h, c]
    if cell == "gru":
        h = gru_step(x, state[0], *arrays)
        return h, [h]
    if cell == "rnn":
        h = simple_rnn_step(x, state[0], *arrays)
        return h, [h]
    raise ValueError(f"unknown cell {cell!r}")


# === Attention ===


def scores(score: str, weights: dict, query, memory):
    """Scores `(..., Tq, S)` of queries `(..., Tq, q)` over a memory `(..., S, D)`.

    - additive (Bahdanau et al., 2014): e_j = v · tanh(W s + U h_j);
    - concat (Luong et al., 2015): e_j = v · tanh(W [s; h_j] + b);
    - dot (Luong): e_j = s · h_j;  general (Luong): e_j = s · (W h_j), i.e. s^T W_a h_j.

    `weights`: `query_projection/kernel` (W, or W's columns for s), `key_projection/kernel`
    (U, or W's columns for h_j), `key_projection/bias` (concat's b), `energy/kernel` (v).
    """
    query = np.asarray(query, np.float64)[..., :, None, :]  # (..., Tq, 1, q)
    memory = np.asarray(memory, np.float64)[..., None, :, :]  # (..., 1, S, D)
    if score == "dot":
        return np.sum(query * memory, axis=-1)
    if score == "general":
        return np.sum(query * (memory @ weights["key_projection/kernel"]), axis=-1)
    v = weights["energy/kernel"][:, 0]
    if score == "additive":
        W, U = weights["query_projection/kernel"], weights["key_projection/kernel"]
        return np.tanh(query @ W + memory @ U) @ v
    if score == "concat":
        # W's rows: first those that multiply s, then those that multiply h_j.
        W = np.concatenate([weights["query_projection/kernel"], weights["key_projection/kernel"]])
        pairs = np.broadcast_shapes(query.shape[:-1], memory.shape[:-1])  # (..., Tq, S)
        both = np.concatenate(
            [
                np.broadcast_to(query, pairs + query.shape[-1:]),
                np.broadcast_to(memory, pairs + memory.shape[-1:]),
            ],
            axis=-1,
        )  # [s; h_j] for every pair
        return np.tanh(both @ W + weights["key_projection/bias"]) @ v
    raise ValueError(f"unknown score {score!r}")


def masked_softmax(scores_, mask):
    """Softmax over the positions where `mask` `(..., S)` is True; exactly 0 elsewhere, and 0
    everywhere when nothing is unmasked."""
    scores_ = np.where(mask, scores_, -np.inf)
    top = np.max(scores_, axis=-1, keepdims=True)
    exp = np.where(mask, np.exp(scores_ - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = np.sum(exp, axis=-1, keepdims=True)
    return np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)


def attend(score: str, weights: dict, query, memory, mask):
    """Context `(D,)` and weights `(S,)` for one query `(q,)` over a memory `(S, D)`:
    α = softmax(e) over the unmasked positions, c = Σ_j α_j h_j."""
    alpha = masked_softmax(scores(score, weights, query[None, :], memory)[0], mask)
    return alpha @ memory, alpha


# === Decoder ===


def sub_weights(weights: dict, prefix: str) -> dict:
    """The entries under `prefix/`, with the prefix removed."""
    start = prefix + "/"
    return {k[len(start) :]: v for k, v in weights.items() if k.startswith(start)}


def summary(memory, mask):
    """C: the mean of the memory over its unmasked positions (zeros if there are none)."""
    count = max(int(np.sum(mask)), 1)
    return np.sum(memory * mask[:, None], axis=0) / count


def initial_state(config: dict, weights: dict, memory, mask) -> dict:
    """s_0 for every layer from tanh(C W_b + b_b), and h~_0 = 0 for Luong input feeding."""
    units, per_layer = config["units"], STATES_PER_LAYER[config["cell"]]
    flat = np.tanh(summary(memory, mask) @ weights["bridge/kernel"] + weights["bridge/bias"])
    pieces = [flat[i * units : (i + 1) * units] for i in range(config["num_layers"] * per_layer)]
    state = {
        "cells": [pieces[i * per_layer : (i + 1) * per_layer] for i in range(config["num_layers"])]
    }
    if feeds_attentional_vector(config):
        state["feed"] = np.zeros(units)
    return state


def feeds_attentional_vector(config: dict) -> bool:
    return config["placement"] == "luong" and bool(config["input_feeding"])


def decoder_step(config: dict, weights: dict, token: int, state: dict, memory, mask):
    """One teacher-forced step for one example: previous token, state, memory `(S, D)`, mask
    `(S,)` -> `(logits (V,), attention weights (S,) (zeros without attention), new state)`."""
    placement, cell, score = config["placement"], config["cell"], config["attention"]
    attention_weights = sub_weights(weights, "attention")
    embedded = weights["embedding/embeddings"][token]
    alpha = np.zeros(len(mask))

    if placement == "bahdanau":
        context, alpha = attend(score, attention_weights, state["cells"][-1][0], memory, mask)
        x = np.concatenate([embedded, context])
    elif placement == "every_step":
        context = summary(memory, mask)
        x = np.concatenate([embedded, context])
    elif feeds_attentional_vector(config):
        x = np.concatenate([embedded, state["feed"]])
    else:
        x = embedded

    new_cells = []
    for layer, layer_state in enumerate(state["cells"]):
        x, layer_state = cell_step(
            cell, sub_weights(weights, f"{cell}_{layer}"), x, list(layer_state)
        )
        new_cells.append(layer_state)
    top = x
    new_state = {"cells": new_cells}

    if placement == "luong":
        context, alpha = attend(score, attention_weights, top, memory, mask)
        features = np.tanh(np.concatenate([context, top]) @ weights["attentional/kernel"])
        if feeds_attentional_vector(config):
            new_state["feed"] = features
    elif placement in ("bahdanau", "every_step"):
        features = np.concatenate([top, context])
    else:
        features = top
    logits = features @ weights["output_projection/kernel"] + weights["output_projection/bias"]
    return logits, alpha, new_state


def decode(config: dict, weights: dict, tokens, memory, mask, state: dict | None = None):
    """Teacher forcing for one example: decoder inputs `(T,)` -> logits `(T, V)` and attention
    weights `(T, S)`, one `decoder_step` after another from `initial_state` (or `state`)."""
    memory = np.asarray(memory, np.float64)
    mask = np.asarray(mask, bool)
    weights = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    if state is None:
        state = initial_state(config, weights, memory, mask)
    all_logits, all_alphas = [], []
    for token in tokens:
        logits, alpha, state = decoder_step(config, weights, int(token), state, memory, mask)
        all_logits.append(logits)
        all_alphas.append(alpha)
    vocabulary_size = weights["output_projection/bias"].shape[0]
    return (
        np.array(all_logits).reshape(len(tokens), vocabulary_size),
        np.array(all_alphas).reshape(len(tokens), len(mask)),
    )


# === Search ===


def log_softmax(logits, excluded=()):
    """log p over the tokens, with the ids in `excluded` given probability 0 (-inf)."""
    logits = np.array(logits, np.float64)
    logits[list(excluded)] = -np.inf
    top = np.max(logits)
    return logits - top - np.log(np.sum(np.exp(logits - top)))


def length_penalty(length: int, alpha: float) -> float:
    """GNMT (Wu et al., 2016): lp(Y) = (5 + |Y|)^α / (5 + 1)^α."""
    return (5.0 + length) ** alpha / 6.0**alpha


def beam_search(log_probs, choosable, end_id, max_length, width, alpha):
    """Beam search written from the algorithm, on one input.

    `log_probs(prefix)` gives the log-probabilities `(V,)` of the next token after a tuple of
    tokens. Start from the empty prefix; at every step extend each unfinished hypothesis by
    every token in `choosable`, carry each finished one (ended by `end_id`) over unchanged, and
    keep the `width` best by total log-probability (ties: the earlier hypothesis, then the
    smaller token id). Stop after `max_length` steps or when every kept hypothesis is finished.
    Finally rank by total log-probability / `length_penalty(length, alpha)`, the length
    counting the end token.

    Returns the ranked hypotheses `[(tokens tuple, normalised score, total log-probability,
    margin)]`, where `margin` is the smallest gap, over the steps, between the last kept and
    the first dropped candidate (inf if none was dropped): a test can check it is not a near tie.
    """
    beam = [((), 0.0, False)]
    margin = np.inf
    for _ in range(max_length):
        if all(finished for _, _, finished in beam):
            break
        candidates = []
        for prefix, total, finished in beam:
            if finished:
                candidates.append((prefix, total, True))
                continue
            step = log_probs(prefix)
            for token in choosable:
                candidates.append((prefix + (token,), total + step[token], token == end_id))
        # A stable sort keeps the candidates' order (hypothesis, then token) among equal totals.
        ranked = sorted(candidates, key=lambda candidate: -candidate[1])
        if len(ranked) > width:
            margin = min(margin, ranked[width - 1][1] - ranked[width][1])
        beam = ranked[:width]
    finals = [
        (prefix, total / length_penalty(len(prefix), alpha), total, margin)
        for prefix, total, _ in beam
    ]
    return sorted(finals, key=lambda final: -final[1])


def all_sequences(choosable, end_id, max_length):
    """Every sequence a search can return: ended by `end_id`, or cut at `max_length`."""
    body = [token for token in choosable if token != end_id]
    sequences = []
    for length in range(1, max_length + 1):
        for words in itertools.product(body, repeat=length - 1):
            sequences.append(words + (end_id,))
        if length == max_length:
            sequences.extend(itertools.product(body, repeat=length))
    return sequences


def sequence_log_prob(log_probs, sequence) -> float:
    return float(sum(log_probs(tuple(sequence[:t]))[token] for t, token in enumerate(sequence)))


def exhaustive_search(log_probs, choosable, end_id, max_length, alpha):
    """Every complete sequence with its normalised score, best first:
    `[(tokens tuple, normalised score, total log-probability)]`."""
    scored = []
    for sequence in all_sequences(choosable, end_id, max_length):
        total = sequence_log_prob(log_probs, sequence)
        scored.append((sequence, total / length_penalty(len(sequence), alpha), total))
    return sorted(scored, key=lambda item: -item[1])
