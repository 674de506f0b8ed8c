"""Tests for shared/text.py: standardization, vocabularies, and the in-graph TextVectorizer."""

import json

import numpy as np
import pytest
import tensorflow as tf

from shared.text import (
    END_ID,
    PAD_ID,
    RESERVED_TOKENS,
    SPACE_MARK,
    START_ID,
    TURN_ID,
    TURN_SEPARATOR,
    UNK_ID,
    TextVectorizer,
    Vocabulary,
    join_tokens,
    split_tokens,
    standardize,
)
from tests.subprocess_helpers import ascii_locale_env, run_python

CHINESE_TEXTS = ["我爱你", "你好 世界", "今天天气很好。"]
WORD_TEXTS = ["Hello, world!", "How are you?", "I am fine, thanks.", "hello again"]


def standardized(texts, mode="word") -> list[str]:
    return [s.decode("utf-8") for s in standardize(tf.constant(texts), mode).numpy()]


def tokens_of(texts, mode="word") -> list[list[str]]:
    rows = split_tokens(tf.constant(texts), mode).to_list()
    return [[t.decode("utf-8") for t in row] for row in rows]


def strings(tensor) -> list[str]:
    return [s.decode("utf-8") for s in tensor.numpy()]


def word_vectorizer(max_length: int = 8) -> TextVectorizer:
    return TextVectorizer(Vocabulary.from_texts(WORD_TEXTS).tokens, max_length=max_length)


def chinese_vectorizer(max_length: int = 12) -> TextVectorizer:
    vocabulary = Vocabulary.from_texts(CHINESE_TEXTS, mode="char")
    return TextVectorizer(vocabulary.tokens, mode="char", max_length=max_length)


def token_id(vectorizer: TextVectorizer, token: str) -> int:
    return vectorizer.vocabulary.tokens.index(token)


# === standardize and split_tokens ===


def test_word_mode_lowercases_and_splits_punctuation_but_keeps_apostrophes():
    assert standardized(["Hello, World! DON'T stop...", "ÀÉÎ Straße"]) == [
        "hello , world ! don't stop . . .",
        "àéî straße",
    ]


def test_white_space_runs_become_one_space_and_ends_are_stripped():
    assert standardized(["  many \n\n spaces\there  "]) == ["many spaces here"]


def test_emoji_become_tokens_of_their_own():
    assert tokens_of(["tea😀time 👍!"]) == [["tea", "😀", "time", "👍", "!"]]


def test_emoji_with_a_variation_selector_stays_one_token():
    # "❤️" is U+2764 followed by the variation selector U+FE0F (a combining mark).
    assert tokens_of(["I ❤️ tea"]) == [["i", "❤\ufe0f", "tea"]]


def test_arabic_right_to_left_text_is_split_into_words_and_punctuation():
    rtl_mark = "\u200f"  # a format character: becomes a space
    text = f"{rtl_mark}مرحبا بالعالم؟ كَتَبَ"  # the fatha marks must stay on their letters
    assert tokens_of([text]) == [["مرحبا", "بالعالم", "؟", "كَتَبَ"]]


def test_control_and_format_characters_become_spaces():
    text = "a\tb\x07c\u200bd\x1be\u2066f"
    assert standardized([text]) == ["a b c d e f"]


@pytest.mark.parametrize("mode", ["word", "char"])
def test_unicode_spaces_are_white_space_not_tokens(mode):
    # No-break space, ideographic space (common in Chinese and Japanese text), line separator.
    texts = ["hello\u00a0world", "你好\u3000世界", "a\u2028b"]
    assert standardized(texts, mode) == ["hello world", "你好 世界", "a b"]


def test_a_nul_character_does_not_cut_the_rest_of_the_text():
    assert standardized(["before\x00after", "x\x00y z"]) == ["before after", "x y z"]


def test_invalid_utf8_becomes_replacement_characters_without_error():
    result = standardize(tf.constant([b"ok\xffgo", b"\xff\xfe", b"caf\xc3"])).numpy()
    decoded = [s.decode("utf-8") for s in result]  # valid UTF-8, or this raises
    assert decoded[0] == "ok \ufffd go"
    assert set(decoded[1].split()) == {"\ufffd"}
    assert decoded[2].startswith("caf")


def test_char_mode_splits_every_character_and_marks_spaces():
    assert tokens_of(["你好  世界!", "Ab"], mode="char") == [
        ["你", "好", SPACE_MARK, "世", "界", "!"],
        ["a", "b"],
    ]


def test_join_tokens_reattaches_punctuation_in_word_mode_and_restores_spaces_in_char_mode():
    word_tokens = tf.ragged.constant([["hello", ",", "world", "!"]])
    assert strings(join_tokens(word_tokens)) == ["hello, world!"]
    char_tokens = tf.ragged.constant([["你", "好", SPACE_MARK, "世", "界"]])
    assert strings(join_tokens(char_tokens, mode="char")) == ["你好 世界"]


def test_unknown_mode_is_a_value_error():
    with pytest.raises(ValueError, match="mode"):
        standardize(tf.constant(["x"]), mode="bytes")
    with pytest.raises(ValueError, match="mode"):
        Vocabulary(RESERVED_TOKENS, mode="bytes")


# === Vocabulary ===


def test_from_texts_ranks_by_count_then_token_after_the_reserved_tokens():
    texts = ["a a a b b c", "a b d"]
    vocabulary = Vocabulary.from_texts(texts)
    assert vocabulary.tokens == RESERVED_TOKENS + ("a", "b", "c", "d")
    assert len(vocabulary) == len(RESERVED_TOKENS) + 4


def test_from_texts_respects_max_size_and_min_count():
    texts = ["a a a b b c", "a b d"]
    assert Vocabulary.from_texts(texts, max_size=7).tokens == RESERVED_TOKENS + ("a", "b")
    assert Vocabulary.from_texts(texts, min_count=2).tokens == RESERVED_TOKENS + ("a", "b")
    assert Vocabulary.from_texts(texts, max_size=2).tokens == RESERVED_TOKENS
    # Batching the count must not change it.
    assert Vocabulary.from_texts(texts * 3, batch_size=1) == Vocabulary.from_texts(texts * 3)


def test_from_texts_never_counts_the_reserved_tokens_as_words():
    vocabulary = Vocabulary.from_texts([f"x {TURN_SEPARATOR} y {TURN_SEPARATOR}"])
    assert vocabulary.tokens == RESERVED_TOKENS + ("x", "y")


def test_vocabulary_must_start_with_reserved_tokens_and_not_repeat_tokens():
    with pytest.raises(ValueError, match="reserved"):
        Vocabulary(("a", "b"))
    with pytest.raises(ValueError, match="twice"):
        Vocabulary(RESERVED_TOKENS + ("a", "a"))


def test_vocabulary_save_load_round_trip(tmp_path):
    for vocabulary in (
        Vocabulary.from_texts(WORD_TEXTS),
        Vocabulary.from_texts(CHINESE_TEXTS, mode="char"),
    ):
        path = tmp_path / f"{vocabulary.mode}.json"
        vocabulary.save(path)
        assert Vocabulary.load(path) == vocabulary
    # No temporary file is left behind, whatever its name.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["char.json", "word.json"]


def test_vocabulary_file_is_utf8_whatever_the_locale(tmp_path):
    """Saving under an ASCII locale (or Windows' cp1252) must still write loadable UTF-8."""
    path = tmp_path / "vocabulary.json"
    script = (
        "import sys\n"
        "from shared.text import Vocabulary\n"
        "Vocabulary.from_texts(['caf\\u00e9 \\u4f60\\u597d'], mode='char').save(sys.argv[1])\n"
    )
    run_python(["-c", script, str(path)], cwd=tmp_path, env=ascii_locale_env(), timeout=120)
    assert {"é", "你", "好"} <= set(Vocabulary.load(path).tokens)


@pytest.mark.parametrize(
    "content",
    [
        b"not json at all",
        b"\xff\xfe\x00garbage",
        json.dumps({"mode": "word"}).encode(),
        json.dumps(["", "[UNK]"]).encode(),
        json.dumps({"mode": "word", "tokens": ["a", "b"]}).encode(),
        json.dumps({"mode": "bytes", "tokens": list(RESERVED_TOKENS)}).encode(),
    ],
    ids=["not-json", "binary", "no-tokens", "a-list", "no-reserved", "bad-mode"],
)
def test_invalid_vocabulary_file_is_a_value_error_naming_the_file(tmp_path, content):
    path = tmp_path / "broken_vocabulary.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="broken_vocabulary.json"):
        Vocabulary.load(path)


def test_missing_vocabulary_file_is_a_value_error_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing_vocabulary.json"):
        Vocabulary.load(tmp_path / "missing_vocabulary.json")


# === TextVectorizer ===


def test_vectorizer_maps_tokens_to_their_vocabulary_positions():
    vectorizer = word_vectorizer(max_length=6)
    ids = vectorizer(tf.constant(["Hello, world!", "hello"])).numpy()
    tokens = vectorizer.vocabulary.tokens
    expected = [tokens.index(t) for t in ["hello", ",", "world", "!"]]
    np.testing.assert_array_equal(ids[0], expected + [PAD_ID, PAD_ID])
    np.testing.assert_array_equal(ids[1], [tokens.index("hello")] + [PAD_ID] * 5)
    assert ids.dtype == np.int32


def test_unknown_words_map_to_the_unknown_id_and_reserved_ids_are_fixed():
    vectorizer = word_vectorizer(max_length=6)
    ids = vectorizer(tf.constant([f"hello zebra {TURN_SEPARATOR} qwerty [UNK]"])).numpy()[0]
    hello = token_id(vectorizer, "hello")
    np.testing.assert_array_equal(ids, [hello, UNK_ID, TURN_ID, UNK_ID, UNK_ID, UNK_ID])
    assert (PAD_ID, UNK_ID, START_ID, END_ID, TURN_ID) == (0, 1, 2, 3, 4)


def test_input_tokens_shows_unknown_words_as_unk():
    vectorizer = word_vectorizer()
    tokens = vectorizer.input_tokens(tf.constant(["hello zebra!"])).to_list()
    assert tokens == [[b"hello", b"[UNK]", b"!"]]


def test_long_text_is_cut_to_max_length():
    vectorizer = word_vectorizer(max_length=5)
    hello = token_id(vectorizer, "hello")
    texts = tf.constant(["hello " * 20_000, "x" * 100_000, "hello world " * 3])
    ids = vectorizer(texts).numpy()
    assert len(texts.numpy()[0]) == 120_000 and len(texts.numpy()[1]) == 100_000
    assert ids.shape == (3, 5)
    np.testing.assert_array_equal(ids[0], [hello] * 5)
    np.testing.assert_array_equal(ids[1], [UNK_ID] + [PAD_ID] * 4)
    assert PAD_ID not in ids[2]


def test_keep_end_reads_the_last_tokens_of_a_long_text():
    start = word_vectorizer(max_length=3)
    end = TextVectorizer(start.vocabulary.tokens, max_length=3, keep="end")
    hello, world = token_id(end, "hello"), token_id(end, "world")
    fine, again = token_id(end, "fine"), token_id(end, "again")
    texts = tf.constant(["hello world fine again", "hello again", ""])
    np.testing.assert_array_equal(
        end(texts).numpy(), [[world, fine, again], [hello, again, PAD_ID], [PAD_ID] * 3]
    )
    np.testing.assert_array_equal(start(texts).numpy()[0], [hello, world, fine])
    words, ids = end.read(texts)
    assert words.to_list()[0] == [b"world", b"fine", b"again"]
    assert ids.to_list()[0] == [world, fine, again]


def test_keep_end_cuts_a_huge_text_by_character_from_its_end():
    """The character cut that bounds the work per input also keeps the text's end."""
    end = TextVectorizer(word_vectorizer().vocabulary.tokens, max_length=4, keep="end")
    hello, again = token_id(end, "hello"), token_id(end, "again")
    ids = end(tf.constant(["x" * 100_000 + " hello again", "héllo " * 30_000 + "again"]))
    np.testing.assert_array_equal(ids.numpy()[0], [UNK_ID, hello, again, PAD_ID])
    np.testing.assert_array_equal(ids.numpy()[1], [UNK_ID] * 3 + [again])


def test_keep_must_be_start_or_end():
    with pytest.raises(ValueError, match="keep"):
        TextVectorizer(word_vectorizer().vocabulary.tokens, keep="middle")


def test_text_is_repaired_before_it_is_cut_by_character(monkeypatch):
    """`substr(unit="UTF8_CHAR")` is undefined on invalid UTF-8: every string it cuts is valid."""
    cut_inputs = []
    real_substr = tf.strings.substr

    def recording_substr(text, *args, **kwargs):
        cut_inputs.append(text.numpy())
        return real_substr(text, *args, **kwargs)

    monkeypatch.setattr(tf.strings, "substr", recording_substr)
    vectorizer = word_vectorizer(max_length=3)
    broken = [b"hello \xe4\xb8 world " * 50, b"\xff\xfe" * 1000 + b" hello"]
    ids = vectorizer(tf.constant(broken)).numpy()
    assert cut_inputs, "the vectorizer no longer cuts long text by character"
    for batch in cut_inputs:
        for text in batch:
            text.decode("utf-8")  # raises UnicodeDecodeError on invalid UTF-8
    hello = token_id(vectorizer, "hello")
    assert ids[0][0] == hello and ids[0][1] == UNK_ID


def test_long_chinese_text_is_cut_to_max_length_in_char_mode():
    vectorizer = chinese_vectorizer(max_length=7)
    ids = vectorizer(tf.constant(["你好" * 50_000])).numpy()
    you, good = token_id(vectorizer, "你"), token_id(vectorizer, "好")
    np.testing.assert_array_equal(ids[0], [you, good, you, good, you, good, you])


def test_char_mode_round_trips_in_vocabulary_chinese_text():
    vectorizer = chinese_vectorizer()
    texts = ["你好 世界", "今天天气很好。", "我爱你"]
    ids = vectorizer(tf.constant(texts))
    assert UNK_ID not in ids.numpy()
    assert strings(vectorizer.decode(ids)) == texts


def test_char_mode_unknown_characters_become_unk():
    vectorizer = chinese_vectorizer()
    ids = vectorizer(tf.constant(["你们"])).numpy()[0]
    np.testing.assert_array_equal(ids[:3], [token_id(vectorizer, "你"), UNK_ID, PAD_ID])


def test_encode_target_layout():
    vectorizer = word_vectorizer(max_length=6)
    hello, world = token_id(vectorizer, "hello"), token_id(vectorizer, "world")
    inputs, labels = vectorizer.encode_target(tf.constant(["hello world", ""]))
    np.testing.assert_array_equal(inputs[0], [START_ID, hello, world, 0, 0, 0])
    np.testing.assert_array_equal(labels[0], [hello, world, END_ID, 0, 0, 0])
    np.testing.assert_array_equal(inputs[1], [START_ID, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(labels[1], [END_ID, 0, 0, 0, 0, 0])
    assert inputs.dtype == labels.dtype == tf.int32


def test_encode_target_respects_max_length_and_always_ends():
    vectorizer = word_vectorizer(max_length=4)
    hello = token_id(vectorizer, "hello")
    inputs, labels = vectorizer.encode_target(tf.constant(["hello " * 1000]))
    np.testing.assert_array_equal(inputs[0], [START_ID, hello, hello, hello])
    np.testing.assert_array_equal(labels[0], [hello, hello, hello, END_ID])


def test_decode_stops_at_end_and_drops_padding_and_start():
    vectorizer = word_vectorizer()
    hello, world = token_id(vectorizer, "hello"), token_id(vectorizer, "world")
    comma, bang = token_id(vectorizer, ","), token_id(vectorizer, "!")
    ids = tf.constant(
        [
            [START_ID, hello, PAD_ID, comma, world, bang, END_ID, hello],
            [hello, UNK_ID, END_ID, END_ID, world, 0, 0, 0],
            [END_ID, hello, 0, 0, 0, 0, 0, 0],
        ]
    )
    assert strings(vectorizer.decode(ids)) == ["hello, world!", "hello [UNK]", ""]
    assert vectorizer.ids_to_tokens(ids).to_list()[1] == [b"hello", b"[UNK]"]


def test_decode_inverts_encode_target_labels():
    vectorizer = word_vectorizer(max_length=10)
    texts = ["hello, world!", "how are you?"]
    _, labels = vectorizer.encode_target(tf.constant(texts))
    assert strings(vectorizer.decode(labels)) == texts


def test_vectorizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_length"):
        TextVectorizer(RESERVED_TOKENS, max_length=2)
    with pytest.raises(ValueError, match="reserved"):
        TextVectorizer(["hello"])
    with pytest.raises(ValueError, match="mode"):
        TextVectorizer(RESERVED_TOKENS, mode="bytes")


def test_vectorizer_works_in_dataset_map():
    vectorizer = word_vectorizer(max_length=6)
    texts = tf.constant(WORD_TEXTS)
    dataset = tf.data.Dataset.from_tensor_slices(WORD_TEXTS).batch(2)
    ids = np.concatenate([batch.numpy() for batch in dataset.map(vectorizer)])
    np.testing.assert_array_equal(ids, vectorizer(texts).numpy())
    pairs = list(dataset.map(vectorizer.encode_target).unbatch().as_numpy_iterator())
    expected_inputs, expected_labels = vectorizer.encode_target(texts)
    np.testing.assert_array_equal([p[0] for p in pairs], expected_inputs)
    np.testing.assert_array_equal([p[1] for p in pairs], expected_labels)


def test_vectorizer_works_in_tf_function_with_input_signature():
    vectorizer = word_vectorizer(max_length=6)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def round_trip(text):
        ids = vectorizer(text)
        return ids, vectorizer.decode(ids)

    for texts in (WORD_TEXTS, WORD_TEXTS[:1]):
        ids, decoded = round_trip(tf.constant(texts))
        np.testing.assert_array_equal(ids, vectorizer(tf.constant(texts)))
        assert strings(decoded) == strings(vectorizer.decode(vectorizer(tf.constant(texts))))
    assert round_trip.experimental_get_tracing_count() == 1
    assert strings(decoded) == ["hello, world!"]


def test_vectorizer_config_round_trip():
    ending = TextVectorizer(word_vectorizer().vocabulary.tokens, max_length=3, keep="end")
    for vectorizer in (word_vectorizer(max_length=5), chinese_vectorizer(max_length=9), ending):
        config = vectorizer.get_config()
        clone = TextVectorizer.from_config(config)
        assert clone.get_config() == config
        texts = tf.constant(WORD_TEXTS + CHINESE_TEXTS)
        np.testing.assert_array_equal(clone(texts), vectorizer(texts))
        assert clone.vocabulary == vectorizer.vocabulary
