"""Tests for chatbot.data: corpus loaders, error reporting, synthetic tasks, splitting."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from chatbot.data import (
    DataError,
    Pair,
    list_languages,
    list_topics,
    load_chatterbot,
    load_cornell,
    load_pairs,
    load_tsv,
    references_by_prompt,
    split_pairs,
    synthetic_pairs,
    synthetic_vocabulary,
    unique_pairs,
)
from shared.text import TURN_SEPARATOR

JOINER = f" {TURN_SEPARATOR} "

# ----------------------------------------------------------------------------------------------
# The installed ChatterBot corpus


@pytest.fixture(scope="module")
def english() -> list[Pair]:
    return load_chatterbot("english")


def test_chatterbot_english_has_many_nonempty_pairs_with_sources(english):
    assert len(english) > 100
    for pair in english:
        assert pair.prompt.strip() and pair.reply.strip()
        file_name, _, line = pair.source.rpartition(":")
        assert file_name.endswith(".yml") and "english" in file_name
        assert int(line) >= 1


def test_chatterbot_sources_point_at_the_reply_line(english):
    pair = english[0]
    file_name, _, line = pair.source.rpartition(":")
    lines = Path(file_name).read_text(encoding="utf-8").splitlines()
    assert pair.reply.split("\n")[0][:20] in lines[int(line) - 1]


def test_chatterbot_languages_and_topics():
    languages = list_languages()
    assert {"english", "chinese", "japanese"} <= set(languages)
    assert languages == sorted(languages)
    assert {"ai", "greetings"} <= set(list_topics("english"))
    with pytest.raises(ValueError, match="klingon"):
        list_topics("klingon")


def test_chatterbot_chinese_loads_cjk_text():
    pairs = load_chatterbot("chinese")
    assert len(pairs) > 100
    assert any("\u4e00" <= char <= "\u9fff" for pair in pairs for char in pair.reply)


def test_chatterbot_topics_filter(english):
    ai_pairs = load_chatterbot("english", topics=["ai"])
    assert 0 < len(ai_pairs) < len(english)
    assert all("/english/ai.yml:" in pair.source for pair in ai_pairs)
    with pytest.raises(ValueError, match="no_such_topic"):
        load_chatterbot("english", topics=["no_such_topic"])


def test_chatterbot_context_turns_joins_previous_turns():
    pairs = load_chatterbot("english", topics=["conversations"], context_turns=2)
    assert any(JOINER in pair.prompt for pair in pairs)
    assert all(pair.prompt.count(TURN_SEPARATOR) <= 1 for pair in pairs)


# ----------------------------------------------------------------------------------------------
# ChatterBot-format fixtures

GOOD_YAML = """\
categories:
- test
conversations:
- - Hello
  - Hi there
  - How are you?
  - Fine
- - Do you say yes?
  - yes
- - How many?
  - 22
- - Show code
  - |
    line one
    line two
"""


def write_corpus(root: Path, files: dict[str, str | bytes], language: str = "testish") -> Path:
    """Write `files` as <root>/<language>/<name> and return `root`."""
    (root / language).mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / language / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def test_yaml_fixture_pairs_keep_written_text(tmp_path):
    root = write_corpus(tmp_path, {"good.yml": GOOD_YAML})
    pairs = load_chatterbot("testish", on_error="raise", corpus_directory=root)
    assert [(pair.prompt, pair.reply) for pair in pairs] == [
        ("Hello", "Hi there"),
        ("Hi there", "How are you?"),
        ("How are you?", "Fine"),
        ("Do you say yes?", "yes"),  # not True
        ("How many?", "22"),  # not the integer 22
        ("Show code", "line one\nline two"),
    ]
    assert pairs[0].source == f"{tmp_path / 'testish/good.yml'}:5"


def test_yaml_context_turns_uses_last_k_turns(tmp_path):
    root = write_corpus(tmp_path, {"good.yml": GOOD_YAML})
    pairs = load_chatterbot("testish", topics=["good"], context_turns=2, corpus_directory=root)
    assert [pair.prompt for pair in pairs[:3]] == [
        "Hello",
        f"Hello{JOINER}Hi there",
        f"Hi there{JOINER}How are you?",
    ]
    assert pairs[3].prompt == "Do you say yes?"  # context never crosses conversations


def test_context_turns_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="context_turns"):
        load_chatterbot("english", context_turns=0)


# ----------------------------------------------------------------------------------------------
# Malformed input: every case raises DataError naming file:line, or is skipped with a warning


def chatterbot_case(bad_content: str | bytes) -> Callable[[Path], Callable[[str], list[Pair]]]:
    """A fixture writer: a good YAML file plus `bad.yml`, loaded as one language."""

    def write(tmp_path: Path) -> Callable[[str], list[Pair]]:
        root = write_corpus(tmp_path, {"good.yml": GOOD_YAML, "bad.yml": bad_content})
        return lambda on_error: load_chatterbot("testish", on_error=on_error, corpus_directory=root)

    return write


GOOD_YAML_PROMPTS = {
    "Hello",
    "Hi there",
    "How are you?",
    "Do you say yes?",
    "How many?",
    "Show code",
}

BAD_YAML_CASES = {
    "yaml_syntax": (
        "conversations:\n- - ok\n  - fine\n- - a: b: c\n  - d\n",
        "bad.yml:4",
        set(),  # the whole file is unreadable
    ),
    "conversation_not_a_list": (
        "conversations:\n- - Question?\n  - Answer.\n"
        "- In a game of bingo, what is two little ducks?\n  - '22'\n",
        "bad.yml:4",
        {"Question?"},
    ),
    "conversation_with_one_utterance": (
        "conversations:\n- - lonely\n- - Question?\n  - Answer.\n",
        "bad.yml:2",
        {"Question?"},
    ),
    "utterance_is_a_mapping": (
        "conversations:\n- - Question?\n  - Note: quoted text needed\n  - Oh.\n",
        "bad.yml:3",
        set(),  # the mapping cuts the conversation: no pair uses it
    ),
    "empty_utterance": (
        "conversations:\n- - Question?\n  - ''\n- - Second?\n  - Yes.\n",
        "bad.yml:3",
        {"Second?"},
    ),
    "no_conversations_key": ("categories:\n- x\n", "bad.yml:1", set()),
    "not_utf8": (b"conversations:\n- - caf\xe9?\n  - yes\n", "bad.yml:2", set()),
}


def tsv_case(content: bytes) -> Callable[[Path], Callable[[str], list[Pair]]]:
    def write(tmp_path: Path) -> Callable[[str], list[Pair]]:
        path = tmp_path / "pairs.tsv"
        path.write_bytes(b"Go.\tVe.\tCC-BY\n" + content + b"Hi.\tHola.\n")
        return lambda on_error: load_tsv(path, on_error=on_error)

    return write


BAD_TSV_CASES = {
    "too_few_columns": (b"just one column\n", "pairs.tsv:2", {"Go.", "Hi."}),
    "empty_reply": (b"Run!\t  \n", "pairs.tsv:2", {"Go.", "Hi."}),
    "empty_prompt": (b"\tCorre.\n", "pairs.tsv:2", {"Go.", "Hi."}),
    "not_utf8": (b"Caf\xe9\tCaf\xe9\n", "pairs.tsv:2", {"Go.", "Hi."}),
}


def cornell_case(lines: str, conversations: str) -> Callable[[Path], Callable[[str], list[Pair]]]:
    def write(tmp_path: Path) -> Callable[[str], list[Pair]]:
        write_cornell(tmp_path, lines, conversations)
        return lambda on_error: load_cornell(tmp_path, on_error=on_error)

    return write


SEP = " +++$+++ "
CORNELL_LINES = (
    f"L1{SEP}u0{SEP}m0{SEP}BIANCA{SEP}Can we make this quick?\n"
    f"L2{SEP}u2{SEP}m0{SEP}CAMERON{SEP}Well, I thought we'd start with the café.\n"
    f"L3{SEP}u0{SEP}m0{SEP}BIANCA{SEP}Not the hacking and gagging.\n"
)
CORNELL_CONVERSATIONS = f"u0{SEP}u2{SEP}m0{SEP}['L1', 'L2', 'L3']\n"


def write_cornell(directory: Path, lines: str, conversations: str) -> None:
    """Write the two Cornell files the way the real corpus is encoded (ISO-8859-1)."""
    (directory / "movie_lines.txt").write_text(lines, encoding="iso-8859-1")
    (directory / "movie_conversations.txt").write_text(conversations, encoding="iso-8859-1")


GOOD_CONVERSATION = f"u0{SEP}u2{SEP}m0{SEP}['L1', 'L2']\n"
BAD_CORNELL_CASES = {
    "line_with_wrong_field_count": (
        CORNELL_LINES + f"L9{SEP}u0{SEP}BIANCA{SEP}missing the movie id\n",
        GOOD_CONVERSATION,
        "movie_lines.txt:4",
        {"Can we make this quick?"},
    ),
    "conversation_with_wrong_field_count": (
        CORNELL_LINES,
        f"u0{SEP}m0{SEP}['L2', 'L3']\n" + GOOD_CONVERSATION,
        "movie_conversations.txt:1",
        {"Can we make this quick?"},
    ),
    "unknown_line_id": (
        CORNELL_LINES,
        GOOD_CONVERSATION + f"u0{SEP}u2{SEP}m0{SEP}['L2', 'L404']\n",
        "movie_conversations.txt:2",
        {"Can we make this quick?"},
    ),
    "line_id_list_not_a_list": (
        CORNELL_LINES,
        f"u0{SEP}u2{SEP}m0{SEP}__import__('os')\n" + GOOD_CONVERSATION,
        "movie_conversations.txt:1",
        {"Can we make this quick?"},
    ),
    "empty_line_text": (
        CORNELL_LINES + f"L4{SEP}u2{SEP}m0{SEP}CAMERON{SEP}\n",
        GOOD_CONVERSATION + f"u0{SEP}u2{SEP}m0{SEP}['L3', 'L4']\n",
        "movie_lines.txt:4",
        {"Can we make this quick?"},
    ),
}

MALFORMED_CASES = [
    *(
        pytest.param(chatterbot_case(content), where, GOOD_YAML_PROMPTS | extra, id=f"yaml-{name}")
        for name, (content, where, extra) in BAD_YAML_CASES.items()
    ),
    *(
        pytest.param(tsv_case(content), where, prompts, id=f"tsv-{name}")
        for name, (content, where, prompts) in BAD_TSV_CASES.items()
    ),
    *(
        pytest.param(cornell_case(lines, conversations), where, prompts, id=f"cornell-{name}")
        for name, (lines, conversations, where, prompts) in BAD_CORNELL_CASES.items()
    ),
]


@pytest.mark.parametrize("write_fixture, where, _good_prompts", MALFORMED_CASES)
def test_malformed_input_raises_naming_file_and_line(tmp_path, write_fixture, where, _good_prompts):
    load = write_fixture(tmp_path)
    with pytest.raises(DataError) as raised:
        load("raise")
    message = str(raised.value)
    assert f"{tmp_path}/" in message
    assert f"{where}: " in message
    assert "--on-error skip" in message


@pytest.mark.parametrize("write_fixture, where, good_prompts", MALFORMED_CASES)
def test_malformed_input_is_skipped_with_a_warning(
    tmp_path, caplog, write_fixture, where, good_prompts
):
    load = write_fixture(tmp_path)
    with caplog.at_level(logging.WARNING, logger="chatbot.data"):
        pairs = load("skip")
    assert {pair.prompt for pair in pairs} == good_prompts
    warnings = [record.getMessage() for record in caplog.records]
    assert any(f"{where}: " in message for message in warnings)
    assert "Skipped 1 malformed entry" in warnings[-1]


def test_on_error_must_be_known(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("a\tb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="on_error"):
        load_tsv(path, on_error="ignore")


def test_missing_inputs_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="tab-separated"):
        load_tsv(tmp_path / "absent.tsv")
    with pytest.raises(FileNotFoundError, match="movie_lines.txt"):
        load_cornell(tmp_path / "absent")
    root = write_corpus(tmp_path / "corpus", {})
    (root / "testish/gone.yml").symlink_to(tmp_path / "absent.yml")  # listed, but no file
    with pytest.raises(FileNotFoundError, match="conversations"):
        load_chatterbot("testish", corpus_directory=root)
    with pytest.raises(FileNotFoundError, match="language"):
        list_languages(tmp_path / "absent")


# ----------------------------------------------------------------------------------------------
# Cornell and TSV


def test_cornell_pairs_decode_latin1_and_follow_conversations(tmp_path):
    write_cornell(tmp_path, CORNELL_LINES, CORNELL_CONVERSATIONS)
    pairs = load_cornell(tmp_path)
    assert [(pair.prompt, pair.reply) for pair in pairs] == [
        ("Can we make this quick?", "Well, I thought we'd start with the café."),
        ("Well, I thought we'd start with the café.", "Not the hacking and gagging."),
    ]
    assert pairs[0].source == f"{tmp_path / 'movie_lines.txt'}:2"


def test_cornell_context_turns(tmp_path):
    write_cornell(tmp_path, CORNELL_LINES, CORNELL_CONVERSATIONS)
    pairs = load_cornell(tmp_path, context_turns=2)
    assert pairs[1].prompt == (
        f"Can we make this quick?{JOINER}Well, I thought we'd start with the café."
    )


def test_tsv_ignores_extra_columns_and_blank_lines(tmp_path):
    path = tmp_path / "spa-eng.txt"
    path.write_text(
        "\ufeffGo.\tVe.\tCC-BY 2.0 (France)\n\nI'm 19.\tTengo diecinueve años.\tCC-BY\n",
        encoding="utf-8",
    )
    pairs = load_tsv(path)
    assert pairs == [
        Pair("Go.", "Ve.", f"{path}:1"),
        Pair("I'm 19.", "Tengo diecinueve años.", f"{path}:3"),
    ]
    swapped = load_tsv(path, prompt_column=1, reply_column=0)
    assert (swapped[0].prompt, swapped[0].reply) == ("Ve.", "Go.")


# ----------------------------------------------------------------------------------------------
# Synthetic tasks


@pytest.mark.parametrize(
    "task, answer",
    [("copy", list), ("reverse", lambda tokens: tokens[::-1]), ("sort", sorted)],
)
def test_synthetic_replies_are_the_known_answer(task, answer):
    pairs = synthetic_pairs(task, num=50, min_len=2, max_len=6, vocab_size=7, seed=3)
    vocabulary = set(synthetic_vocabulary(7))
    assert len(pairs) == 50
    for pair in pairs:
        tokens = pair.prompt.split(" ")
        assert 2 <= len(tokens) <= 6
        assert set(tokens) <= vocabulary
        assert pair.reply.split(" ") == answer(tokens)
    lengths = {len(pair.prompt.split(" ")) for pair in pairs}
    assert lengths == {2, 3, 4, 5, 6}


def test_synthetic_pairs_are_deterministic_from_the_seed():
    first = synthetic_pairs("reverse", num=20, min_len=1, max_len=5, seed=1)
    assert first == synthetic_pairs("reverse", num=20, min_len=1, max_len=5, seed=1)
    assert first != synthetic_pairs("reverse", num=20, min_len=1, max_len=5, seed=2)


def test_synthetic_vocabulary_words_sort_in_vocabulary_order():
    assert synthetic_vocabulary(3) == ["a", "b", "c"]
    words = synthetic_vocabulary(30)
    assert len(set(words)) == 30 and words == sorted(words)
    assert {len(word) for word in words} == {2}


def test_synthetic_arguments_are_checked():
    with pytest.raises(ValueError, match="task"):
        synthetic_pairs("shuffle", num=1, min_len=1, max_len=2)
    with pytest.raises(ValueError, match="min_len"):
        synthetic_pairs("copy", num=1, min_len=5, max_len=2)


# ----------------------------------------------------------------------------------------------
# Splitting, grouping, dispatcher


def many_replies_pairs() -> list[Pair]:
    """40 prompts, each with 1 to 3 replies."""
    return [
        Pair(f"prompt {index}", f"reply {index}.{variant}", f"test:{index}")
        for index in range(40)
        for variant in range(1 + index % 3)
    ]


def test_split_pairs_keeps_prompts_disjoint_and_is_deterministic():
    pairs = many_replies_pairs()
    train, validation, test = split_pairs(pairs, 0.25, 0.1, seed=5)
    prompt_sets = [{pair.prompt for pair in split} for split in (train, validation, test)]
    assert [len(prompts) for prompts in prompt_sets] == [26, 10, 4]
    assert not (prompt_sets[0] & prompt_sets[1] or prompt_sets[0] & prompt_sets[2])
    assert not prompt_sets[1] & prompt_sets[2]
    assert sorted(train + validation + test, key=pairs.index) == pairs
    assert split_pairs(pairs, 0.25, 0.1, seed=5) == (train, validation, test)
    assert split_pairs(list(reversed(pairs)), 0.25, 0.1, seed=5)[2] == list(reversed(test))
    assert split_pairs(pairs, 0.25, 0.1, seed=6) != (train, validation, test)


def test_split_pairs_checks_fractions():
    with pytest.raises(ValueError, match="below 1"):
        split_pairs(many_replies_pairs(), 0.6, 0.4, seed=0)


def test_references_by_prompt_deduplicates_in_order():
    pairs = [Pair("hi", "hello", "a"), Pair("hi", "hey", "b"), Pair("hi", "hello", "c")]
    pairs.append(Pair("bye", "ciao", "d"))
    assert references_by_prompt(pairs) == {"hi": ["hello", "hey"], "bye": ["ciao"]}
    assert unique_pairs(pairs) == [pairs[0], pairs[1], pairs[3]]


def test_load_pairs_dispatches_on_the_source_string(tmp_path):
    assert load_pairs("sort:num=7,max_len=4,vocab_size=5") == synthetic_pairs(
        "sort", num=7, min_len=3, max_len=4, vocab_size=5
    )
    assert len(load_pairs("copy")) == 1000
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("Go.\tVe.\n", encoding="utf-8")
    assert load_pairs(f"tsv:{tsv}") == [Pair("Go.", "Ve.", f"{tsv}:1")]
    write_cornell(tmp_path, CORNELL_LINES, CORNELL_CONVERSATIONS)
    assert len(load_pairs(f"cornell:{tmp_path}", context_turns=2)) == 2
    ai_pairs = load_pairs("chatterbot:english:ai")
    assert ai_pairs == load_chatterbot("english", topics=["ai"])
    with pytest.raises(ValueError, match="Unknown data source"):
        load_pairs("movies")
    with pytest.raises(ValueError, match="Bad option"):
        load_pairs("copy:length=3")
