"""Where the chatbot's (prompt, reply) training pairs come from.

Every source ends up as the same thing: a plain Python list of `Pair` records. Keeping the
data layer free of tokenisation and tensors makes it easy to inspect, test and split; the
training pipeline turns a list into a `tf.data.Dataset`.

Sources:
- the ChatterBot corpus shipped in the `chatterbot_corpus` PyPI package (YAML, many languages),
- the Cornell Movie-Dialogs corpus (`movie_lines.txt` + `movie_conversations.txt`),
- tab-separated files such as the Anki `spa-eng.txt` sentence pairs,
- synthetic tasks with known answers (copy, reverse, sort) for tests and teaching.

Malformed input is reported with the file and line at fault. Each loader takes
`on_error="raise"` (stop with a `DataError`) or `on_error="skip"` (log a warning, keep going,
and log how many entries were skipped at the end).
"""

from __future__ import annotations

import ast
import logging
import random
import string
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import chatterbot_corpus
import yaml

from chatbot.turns import context_prompt

logger = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("raise", "skip")
SYNTHETIC_TASKS = ("copy", "reverse", "sort")

# The C parser is much faster; it reports the same line numbers as the pure-Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_NULL_TAG = "tag:yaml.org,2002:null"
_CORNELL_FIELD_SEPARATOR = "+++$+++"


@dataclass(frozen=True)
class Pair:
    """One training example: what the user said, what the bot should answer.

    `source` says where the pair came from, as "file:line" (the reply's line) where known.
    """

    prompt: str
    reply: str
    source: str


class DataError(ValueError):
    """Malformed training data; the message names the file and line at fault."""


# ----------------------------------------------------------------------------------------------
# Error policy shared by all loaders


class _Problems:
    """Raises or logs each malformed entry according to `on_error`, and counts the skipped ones."""

    def __init__(self, on_error: str):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}.")
        self.on_error = on_error
        self.skipped = 0

    def report(self, location: str, problem: str) -> None:
        """Raise `DataError` or log a warning for `problem` found at `location` ("file:line")."""
        if self.on_error == "raise":
            raise DataError(
                f"{location}: {problem}; fix it, or skip malformed entries with --on-error skip."
            )
        logger.warning("%s: %s; skipping it.", location, problem)
        self.skipped += 1

    def log_summary(self, what: str) -> None:
        """Log how many entries were skipped while reading `what`, if any."""
        if self.skipped:
            noun = "entry" if self.skipped == 1 else "entries"
            logger.warning("Skipped %d malformed %s while reading %s.", self.skipped, noun, what)


# ----------------------------------------------------------------------------------------------
# Conversations -> pairs (shared by the ChatterBot and Cornell loaders)


@dataclass(frozen=True)
class _Turn:
    """One utterance of a conversation and where it was read ("file:line")."""

    text: str
    location: str


def _make_turn(text: str, location: str, problems: _Problems) -> _Turn | None:
    """A stripped `_Turn`, or None (after reporting) when the utterance is empty."""
    text = text.strip()
    if not text:
        problems.report(location, "empty utterance")
        return None
    return _Turn(text, location)


def _pairs_from_conversation(turns: list[_Turn | None], context_turns: int) -> list[Pair]:
    """Consecutive turns become prompt -> reply pairs: t0 -> t1, t1 -> t2, ...

    The prompt is the last `context_turns` turns joined by " ␞ " (`chatbot.turns`, which the
    demo uses too). A None turn (a malformed utterance, already reported) cuts the
    conversation: no pair or context crosses it.
    """
    pairs = []
    history: list[_Turn] = []
    for turn in turns:
        if turn is None:
            history = []
            continue
        if history:
            context = [previous.text for previous in history[-context_turns:]]
            prompt = context_prompt(context, context_turns)
            pairs.append(Pair(prompt=prompt, reply=turn.text, source=turn.location))
        history.append(turn)
    return pairs


def _check_context_turns(context_turns: int) -> None:
    if not isinstance(context_turns, int) or context_turns < 1:
        raise ValueError(f"context_turns must be a positive integer, got {context_turns!r}.")


# ----------------------------------------------------------------------------------------------
# ChatterBot corpus: <data>/<language>/<topic>.yml, each with a `conversations:` list of lists


def chatterbot_directory() -> Path:
    """The `data` directory of the installed `chatterbot_corpus` package."""
    return Path(chatterbot_corpus.__file__).resolve().parent / "data"


def list_languages(corpus_directory: str | Path | None = None) -> list[str]:
    """Languages of the ChatterBot corpus (sub-directory names), sorted."""
    root = Path(corpus_directory) if corpus_directory is not None else chatterbot_directory()
    if not root.is_dir():
        raise FileNotFoundError(
            f"No ChatterBot corpus directory at {root}; expected one sub-directory per language."
        )
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir())


def list_topics(language: str = "english", corpus_directory: str | Path | None = None) -> list[str]:
    """Topics of one ChatterBot language (the `.yml` file names without extension), sorted."""
    root = Path(corpus_directory) if corpus_directory is not None else chatterbot_directory()
    languages = list_languages(root)
    if language not in languages:
        raise ValueError(
            f"Unknown ChatterBot language {language!r}; choose one of: {', '.join(languages)}."
        )
    return sorted(path.stem for path in (root / language).glob("*.yml"))


def load_chatterbot(
    language: str = "english",
    topics: list[str] | None = None,
    context_turns: int = 1,
    on_error: str = "skip",
    corpus_directory: str | Path | None = None,
) -> list[Pair]:
    """Pairs from the ChatterBot corpus of one language, topics in alphabetical order.

    `topics=None` reads every topic. `on_error` defaults to "skip" here because the shipped
    corpus has a few typos (e.g. english/trivia.yml) that a user cannot fix in site-packages.
    `corpus_directory` replaces the installed package's data directory (same layout).
    """
    _check_context_turns(context_turns)
    problems = _Problems(on_error)
    root = Path(corpus_directory) if corpus_directory is not None else chatterbot_directory()
    available = list_topics(language, root)
    if topics is None:
        topics = available
    unknown = [topic for topic in topics if topic not in available]
    if unknown:
        raise ValueError(
            f"Unknown ChatterBot topic(s) {unknown} for {language!r}; "
            f"choose from: {', '.join(available)}."
        )
    pairs = []
    for topic in sorted(topics):
        pairs += _read_chatterbot_yaml(root / language / f"{topic}.yml", context_turns, problems)
    problems.log_summary(f"the ChatterBot corpus ({language})")
    return pairs


def _read_chatterbot_yaml(path: Path, context_turns: int, problems: _Problems) -> list[Pair]:
    """Parse one YAML file into pairs; a file that cannot be parsed is reported as a whole.

    The file is read as a YAML node tree rather than Python objects so that every utterance
    keeps its line number and its text exactly as written (`yes` stays "yes", not True).
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"No ChatterBot YAML file at {path}; expected a file with a 'conversations:' list."
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        problems.report(f"{path}:{line}", f"byte {raw[error.start]:#04x} is not valid UTF-8")
        return []
    try:
        root = yaml.compose(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(error, "problem", None) or str(error)
        context, context_mark = (
            getattr(error, "context", None),
            getattr(error, "context_mark", None),
        )
        if (
            context
            and context_mark is not None
            and (mark is None or context_mark.line != mark.line)
        ):
            reason = f"{context} at line {context_mark.line + 1}: {reason}"
        problems.report(f"{path}:{line}", f"not valid YAML ({reason})")
        return []

    conversations = _conversations_node(root)
    if conversations is None:
        line = root.start_mark.line + 1 if root is not None else 1
        problems.report(f"{path}:{line}", "expected a mapping with a 'conversations:' list")
        return []

    pairs = []
    for number, conversation in enumerate(conversations.value, start=1):
        location = f"{path}:{conversation.start_mark.line + 1}"
        if not isinstance(conversation, yaml.SequenceNode):
            problems.report(
                location,
                f"conversation {number} is not a list of utterances "
                "(is a '- ' missing before its first utterance?)",
            )
            continue
        if len(conversation.value) < 2:
            problems.report(
                location,
                f"conversation {number} has {len(conversation.value)} utterance(s), "
                "expected at least 2",
            )
            continue
        turns = [_yaml_turn(node, path, problems) for node in conversation.value]
        pairs += _pairs_from_conversation(turns, context_turns)
    return pairs


def _conversations_node(root: yaml.Node | None) -> yaml.SequenceNode | None:
    """The node under the top-level `conversations:` key, or None if there is no such list."""
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "conversations":
            return value if isinstance(value, yaml.SequenceNode) else None
    return None


def _yaml_turn(node: yaml.Node, path: Path, problems: _Problems) -> _Turn | None:
    """One utterance node as a `_Turn`; numbers and booleans keep their written text."""
    location = f"{path}:{node.start_mark.line + 1}"
    if not isinstance(node, yaml.ScalarNode):
        kind = "mapping" if isinstance(node, yaml.MappingNode) else "list"
        problems.report(
            location, f"utterance is a YAML {kind}, not text (quote text that contains ': ')"
        )
        return None
    text = "" if node.tag == _YAML_NULL_TAG else node.value
    return _make_turn(text, location, problems)


# ----------------------------------------------------------------------------------------------
# Cornell Movie-Dialogs corpus


def load_cornell(
    directory: str | Path, context_turns: int = 1, on_error: str = "raise"
) -> list[Pair]:
    """Pairs from the Cornell Movie-Dialogs corpus in `directory`, in conversation order.

    Reads `movie_lines.txt` (`L1045 +++$+++ u0 +++$+++ m0 +++$+++ BIANCA +++$+++ They do not!`)
    and `movie_conversations.txt` (`u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L194', 'L195']`),
    both ISO-8859-1 encoded.
    """
    _check_context_turns(context_turns)
    problems = _Problems(on_error)
    directory = Path(directory)
    lines_path = directory / "movie_lines.txt"
    conversations_path = directory / "movie_conversations.txt"
    for path in (lines_path, conversations_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"No {path.name} in {directory}; expected the unzipped Cornell Movie-Dialogs "
                "corpus directory with movie_lines.txt and movie_conversations.txt."
            )

    turns_by_id, malformed_ids = _read_cornell_lines(lines_path, problems)
    pairs = []
    for location, fields in _cornell_records(conversations_path):
        if len(fields) != 4:
            problems.report(location, _cornell_field_count_problem(4, len(fields)))
            continue
        line_ids = _parse_line_ids(fields[3])
        if line_ids is None:
            problems.report(
                location, f"expected a list of line ids like ['L1', 'L2'], got {fields[3]!r}"
            )
            continue
        turns: list[_Turn | None] = []
        for line_id in line_ids:
            if line_id in turns_by_id:
                turn = turns_by_id[line_id]
                turns.append(_make_turn(turn.text, turn.location, problems))
            else:
                if line_id not in malformed_ids:  # malformed lines were reported already
                    problems.report(location, f"line id {line_id!r} is not in {lines_path.name}")
                turns.append(None)
        pairs += _pairs_from_conversation(turns, context_turns)
    problems.log_summary(f"the Cornell corpus in {directory}")
    return pairs


def _read_cornell_lines(path: Path, problems: _Problems) -> tuple[dict[str, _Turn], set[str]]:
    """`movie_lines.txt` as {line id: turn}, plus the ids of lines that were malformed."""
    turns_by_id: dict[str, _Turn] = {}
    malformed_ids: set[str] = set()
    for location, fields in _cornell_records(path):
        if len(fields) != 5:
            problems.report(location, _cornell_field_count_problem(5, len(fields)))
            malformed_ids.add(fields[0])
            continue
        line_id, text = fields[0], fields[4]
        if line_id in turns_by_id:
            problems.report(location, f"line id {line_id!r} appears twice")
            continue
        turns_by_id[line_id] = _Turn(text, location)  # emptiness is checked when used
    return turns_by_id, malformed_ids


def _cornell_records(path: Path) -> Iterator[tuple[str, list[str]]]:
    """Yield ("file:line", stripped fields) for each non-blank line of a Cornell file."""
    with path.open(encoding="iso-8859-1", errors="replace", newline="\n") as file:
        for number, line in enumerate(file, start=1):
            if line.strip():
                fields = [field.strip() for field in line.split(_CORNELL_FIELD_SEPARATOR)]
                yield f"{path}:{number}", fields


def _cornell_field_count_problem(expected: int, got: int) -> str:
    return f"expected {expected} fields separated by '{_CORNELL_FIELD_SEPARATOR}', got {got}"


def _parse_line_ids(text: str) -> list[str] | None:
    """ "['L194', 'L195']" -> ["L194", "L195"] (a safe literal parse), or None if malformed."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return value


# ----------------------------------------------------------------------------------------------
# Tab-separated pairs (e.g. Anki's spa-eng.txt: English, Spanish, attribution)


def load_tsv(
    path: str | Path, prompt_column: int = 0, reply_column: int = 1, on_error: str = "raise"
) -> list[Pair]:
    """Pairs from a UTF-8 file with one tab-separated example per line; extra columns ignored.

    Blank lines are skipped silently.
    """
    for name, column in (("prompt_column", prompt_column), ("reply_column", reply_column)):
        if not isinstance(column, int) or column < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {column!r}.")
    problems = _Problems(on_error)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No TSV file at {path}; expected a UTF-8 text file with one "
            "tab-separated prompt/reply pair per line."
        )
    columns_needed = max(prompt_column, reply_column) + 1
    pairs = []
    with path.open("rb") as file:
        for number, raw_line in enumerate(file, start=1):
            location = f"{path}:{number}"
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                problems.report(location, f"byte {raw_line[error.start]:#04x} is not valid UTF-8")
                continue
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < columns_needed:
                problems.report(
                    location,
                    f"expected at least {columns_needed} tab-separated columns, got {len(fields)}",
                )
                continue
            prompt, reply = fields[prompt_column].strip(), fields[reply_column].strip()
            if not prompt or not reply:
                problems.report(location, f"empty {'prompt' if not prompt else 'reply'}")
                continue
            pairs.append(Pair(prompt=prompt, reply=reply, source=location))
    problems.log_summary(str(path))
    return pairs


# ----------------------------------------------------------------------------------------------
# Synthetic tasks with known answers


def synthetic_vocabulary(vocab_size: int) -> list[str]:
    """`vocab_size` distinct lowercase words of equal length: "a".."z", then "aa", "ab", ...

    All words have the same length, so alphabetical order is vocabulary order.
    """
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}.")
    width = 1
    while len(string.ascii_lowercase) ** width < vocab_size:
        width += 1
    words = []
    for index in range(vocab_size):
        letters = []
        for _ in range(width):
            index, digit = divmod(index, len(string.ascii_lowercase))
            letters.append(string.ascii_lowercase[digit])
        words.append("".join(reversed(letters)))
    return words


def synthetic_pairs(
    task: str, num: int, min_len: int, max_len: int, vocab_size: int = 20, seed: int = 0
) -> list[Pair]:
    """`num` pairs whose reply is a known function of the prompt, e.g. "c a b" -> "b a c".

    task: "copy" (same sequence), "reverse" (reversed) or "sort" (alphabetical order).
    Sequences are space-separated words from `synthetic_vocabulary(vocab_size)` with lengths
    uniform in [min_len, max_len]; the same arguments always give the same pairs.
    """
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"task must be one of {SYNTHETIC_TASKS}, got {task!r}.")
    if not isinstance(num, int) or num < 0:
        raise ValueError(f"num must be a non-negative integer, got {num!r}.")
    if not (isinstance(min_len, int) and isinstance(max_len, int) and 1 <= min_len <= max_len):
        raise ValueError(f"Need integers 1 <= min_len <= max_len, got {min_len!r}, {max_len!r}.")
    vocabulary = synthetic_vocabulary(vocab_size)
    rng = random.Random(seed)
    pairs = []
    for index in range(num):
        tokens = [rng.choice(vocabulary) for _ in range(rng.randint(min_len, max_len))]
        if task == "copy":
            answer = tokens
        elif task == "reverse":
            answer = tokens[::-1]
        else:
            answer = sorted(tokens)
        pairs.append(Pair(" ".join(tokens), " ".join(answer), source=f"synthetic:{task}:{index}"))
    return pairs


# ----------------------------------------------------------------------------------------------
# Splitting and grouping


def split_pairs(
    pairs: list[Pair], validation_fraction: float, test_fraction: float, seed: int = 0
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, validation, test), split by prompt: all pairs with one prompt share a split.

    The fractions are of distinct prompts (rounded); pairs keep their original order within
    each split. The result depends only on the pairs and the seed.
    """
    for name, fraction in (
        ("validation_fraction", validation_fraction),
        ("test_fraction", test_fraction),
    ):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {fraction!r}.")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError(
            "validation_fraction + test_fraction must be below 1 to leave pairs for training, "
            f"got {validation_fraction} + {test_fraction}."
        )
    prompts = sorted({pair.prompt for pair in pairs})
    random.Random(seed).shuffle(prompts)
    num_test = round(test_fraction * len(prompts))
    num_validation = round(validation_fraction * len(prompts))
    test_prompts = set(prompts[:num_test])
    validation_prompts = set(prompts[num_test : num_test + num_validation])
    train, validation, test = [], [], []
    for pair in pairs:
        if pair.prompt in test_prompts:
            test.append(pair)
        elif pair.prompt in validation_prompts:
            validation.append(pair)
        else:
            train.append(pair)
    return train, validation, test


def references_by_prompt(pairs: list[Pair]) -> dict[str, list[str]]:
    """{prompt: its distinct replies in first-seen order}, e.g. for multi-reference BLEU."""
    references: dict[str, list[str]] = {}
    for pair in pairs:
        replies = references.setdefault(pair.prompt, [])
        if pair.reply not in replies:
            replies.append(pair.reply)
    return references


def unique_pairs(pairs: list[Pair]) -> list[Pair]:
    """The first occurrence of each distinct (prompt, reply), in order.

    Worth applying to ChatterBot English: tech_support.yml repeats 10 pairs about 100 times each.
    """
    seen: set[tuple[str, str]] = set()
    unique = []
    for pair in pairs:
        if (pair.prompt, pair.reply) not in seen:
            seen.add((pair.prompt, pair.reply))
            unique.append(pair)
    return unique


# ----------------------------------------------------------------------------------------------
# One entry point for a `--data` command-line flag


def load_pairs(
    source: str, *, context_turns: int = 1, on_error: str | None = None, seed: int = 0
) -> list[Pair]:
    """Pairs from a `--data` style source string.

    - "chatterbot"                        English ChatterBot corpus, all topics
    - "chatterbot:<language>"             e.g. "chatterbot:chinese" (see `list_languages()`)
    - "chatterbot:<language>:<t1>,<t2>"   only some topics, e.g. "chatterbot:english:ai,food"
    - "cornell:<directory>"               Cornell Movie-Dialogs corpus directory
    - "tsv:<path>"                        tab-separated file, column 0 -> column 1
    - "copy" | "reverse" | "sort"         synthetic task: 1000 pairs of 3..8 words from 20
    - "reverse:num=5000,max_len=12"       synthetic task with options: num, min_len, max_len,
                                          vocab_size, seed (the `seed` argument by default)

    `on_error=None` keeps each loader's default ("skip" for ChatterBot, "raise" otherwise).
    `context_turns` applies to the conversation corpora (ChatterBot and Cornell).
    """
    kind, _, argument = source.partition(":")
    error_policy = {} if on_error is None else {"on_error": on_error}
    if kind == "chatterbot":
        language, _, topic_list = argument.partition(":")
        topics = [topic.strip() for topic in topic_list.split(",") if topic.strip()] or None
        return load_chatterbot(
            language or "english", topics, context_turns=context_turns, **error_policy
        )
    if kind == "cornell" and argument:
        return load_cornell(argument, context_turns=context_turns, **error_policy)
    if kind == "tsv" and argument:
        return load_tsv(argument, **error_policy)
    if kind in SYNTHETIC_TASKS:
        options = {"num": 1000, "min_len": 3, "max_len": 8, "vocab_size": 20, "seed": seed}
        options.update(_parse_options(argument, allowed=options.keys(), source=source))
        return synthetic_pairs(kind, **options)
    raise ValueError(
        f"Unknown data source {source!r}; use chatterbot[:<language>[:<topics>]], "
        "cornell:<directory>, tsv:<path>, or one of copy, reverse, sort."
    )


def _parse_options(text: str, allowed: Collection[str], source: str) -> dict[str, int]:
    """ "num=500,max_len=6" -> {"num": 500, "max_len": 6}; only integer options in `allowed`."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or name not in allowed:
            raise ValueError(
                f"Bad option {item!r} in data source {source!r}; "
                f"use name=integer with a name from: {', '.join(allowed)}."
            )
        try:
            options[name] = int(value)
        except ValueError:
            raise ValueError(
                f"Option {name!r} in data source {source!r} must be an integer, got {value!r}."
            ) from None
    return options
