"""TextBuffer: pieces released at certain boundaries, whatever the fragments, never inside a word or number."""

from __future__ import annotations

import random

import pytest

from tts_server.text.incremental import BufferPolicy, TextBuffer


def feed(buffer: TextBuffer, fragments: list[str]) -> list[list[str]]:
    """Append each fragment and collect what was released after it."""
    out = []
    for fragment in fragments:
        buffer.append(fragment)
        out.append(buffer.take_ready())
    return out


def test_a_sentence_is_released_once_the_next_word_begins():
    buffer = TextBuffer(BufferPolicy(first_clause_chars=0))
    assert feed(buffer, ["Hello", " there", ".", " ", "How"]) == [[], [], [], [], ["Hello there."]]
    assert buffer.take_all() == "How"
    assert buffer.take_all() is None


@pytest.mark.parametrize(
    ("fragments", "first"),
    [
        (["I paid 3", ".", "14 dollars. Then"], "I paid 3.14 dollars."),  # "3." was not an end
        (["Ask Mr", ". ", "Smith now. Go"], "Ask Mr. Smith now."),  # nor "Mr."
        (["Use e.g. ", "apples here. Or"], "Use e.g. apples here."),
        (['He said "Stop.', '" Then'], 'He said "Stop."'),  # the closing quote belongs to it
        (["今天天气很好。", "」我们"], "今天天气很好。」"),
    ],
)
def test_boundaries_that_could_still_change_wait(fragments, first):
    buffer = TextBuffer(BufferPolicy(first_clause_chars=0))
    released = [p for ps in feed(buffer, fragments) for p in ps]
    assert released == [first]


def test_the_first_piece_may_end_at_a_clause():
    buffer = TextBuffer(BufferPolicy(first_clause_chars=12))
    assert feed(buffer, ["Well,", " I think", " that we should go,", " because"]) == [
        [],
        [],
        [],
        ["Well, I think that we should go,"],  # "Well," alone is too short
    ]
    assert feed(buffer, [" it is late, and", " dark. Yes"]) == [[], ["because it is late, and dark."]]


def test_a_number_with_a_comma_is_not_a_clause():
    buffer = TextBuffer(BufferPolicy(first_clause_chars=1))
    assert feed(buffer, ["We counted 1,", "000 people, all"]) == [[], ["We counted 1,000 people,"]]


def test_text_without_boundaries_is_cut_at_a_space_before_max_chars():
    buffer = TextBuffer(BufferPolicy(max_chars=20, first_clause_chars=0))
    buffer.append("one two three four five six seven eight nine ten eleven")
    assert buffer.take_ready() == ["one two three four", "five six seven eight"]
    assert buffer.take_all() == "nine ten eleven"
    buffer.append("x" * 45)  # no space: cut anyway
    assert buffer.take_ready() == ["x" * 20, "x" * 20]
    assert buffer.pending == 5


def test_clear_drops_everything_buffered():
    buffer = TextBuffer()
    buffer.append("Half a sent")
    assert buffer.clear() == 11
    assert buffer.pending == 0 and buffer.take_all() is None


def test_policy_is_validated():
    with pytest.raises(ValueError, match="max_chars"):
        BufferPolicy(max_chars=0)
    with pytest.raises(ValueError, match="first_clause_chars"):
        BufferPolicy(first_clause_chars=-1)


WORDS = ["the", "quick", "Mr.", "e.g.", "3.14", "1,000", "U.S.", "apples", "(note)", '"quoted."', "今天", "好。"]
ENDS = ["", "", "", ".", ",", "!", "?", ";"]


def test_property_fragments_never_split_a_word_and_lose_nothing():
    rng = random.Random(7)
    for _ in range(300):
        words = [w + ("" if w.endswith("。") else rng.choice(ENDS)) for w in rng.choices(WORDS, k=rng.randint(1, 60))]
        text = " ".join(words)
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 40)))) if len(text) > 1 else []
        fragments = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        buffer = TextBuffer(BufferPolicy(max_chars=rng.choice([8, 40, 300]), first_clause_chars=rng.choice([0, 10])))
        pieces = [p for ps in feed(buffer, fragments) for p in ps]
        rest = buffer.take_all()
        pieces += [rest] if rest else []
        assert "".join(pieces).replace(" ", "") == text.replace(" ", "")  # nothing lost, nothing added
        position = 0
        for piece in pieces:  # every cut falls between words, or inside a word longer than max_chars
            position = text.index(piece, position) + len(piece)
            if position < len(text) and text[position] != " ":
                word_start = text.rfind(" ", 0, position) + 1
                word_end = text.find(" ", position) % (len(text) + 1)
                assert word_end - word_start > buffer.policy.max_chars, (text, pieces)


def test_a_flood_of_one_character_fragments_stays_cheap():
    text = "This is one sentence, with a clause. " * 200
    buffer = TextBuffer()
    released = 0
    for ch in text:
        buffer.append(ch)
        released += len(buffer.take_ready())
        assert buffer.pending <= buffer.policy.max_chars + 1
    assert released == 199  # the last sentence waits for what follows it
    assert buffer.take_all() == "This is one sentence, with a clause."
