"""An answer that restates its question is cut to the answer, whole or as it streams."""

from __future__ import annotations

import pytest

from infini_cli.tasks.restatement import RestatementFilter, drop_restatement, echoes_question, restatement_end
from infini_cli.tasks.writer import NOT_IN_DOCUMENT

CASES = [
    # a clause repeating the question, then the answer
    ("What kind of economy does Victoria have?", "The economy of Victoria is highly diversified", "highly diversified"),
    ("Imperialism is responsible for the rapid spread of what?",
     "Imperialism is responsible for the rapid spread of technology and ideas", "technology and ideas"),
    ("What are the three sectors of construction?",
     "The three sectors of construction are buildings, infrastructure and industrial",
     "buildings, infrastructure and industrial"),
    ("When did the famine begin?", "The famine began in 1331.", "The famine began in 1331."),  # "began" is not "begin"
    ("When was the museum founded?", "The museum was founded in 1852.", "1852."),
    # a noun phrase that starts with a question word is the answer itself (no verb)
    ("Which department sponsors the museum?", "The Department for Culture, Media and Sport",
     "The Department for Culture, Media and Sport"),
    # words of the answer joined inside stay one word: "10.1" is not the question's "10"
    ('How much was the wealth of the "10 Million dollar millionaires"?', "10.1 trillion", "10.1 trillion"),
    # stop words without a word of the question are no restatement
    ("Where was the market moved?", "to the hill above the harbour", "to the hill above the harbour"),
    # nothing but the question's words: kept whole
    ("Is the bridge old?", "The bridge is old", "The bridge is old"),
    # the absent answer is never cut, whatever the question says
    ("What does the document say it does?", NOT_IN_DOCUMENT, NOT_IN_DOCUMENT),
    ("Who?", "", ""),
]


@pytest.mark.parametrize("question, answer, expected", CASES)
def test_a_restatement_of_the_question_is_dropped(question, answer, expected):
    assert drop_restatement(answer, question) == expected


@pytest.mark.parametrize("question, answer, expected", CASES)
def test_streamed_in_any_pieces_the_answer_is_the_same(question, answer, expected):
    """Pieces equal whole: one character at a time, two, or all at once."""
    for size in (1, 2, 3, max(1, len(answer))):
        shown: list[str] = []
        stream = RestatementFilter(question, shown.append)
        for i in range(0, len(answer), size):
            stream(answer[i:i + size])
        stream.finish()
        assert "".join(shown).strip() == expected, size


def test_a_stream_holds_back_only_until_the_answer_starts():
    shown: list[str] = []
    stream = RestatementFilter("When was the museum founded?", shown.append)
    for piece in ("The", " museum", " was", " founded", " in"):
        stream(piece)
    assert shown == []  # all the question's words so far
    stream(" 1852")
    assert shown == []  # "1852" may go on
    stream(".")
    assert shown == []  # "1852." may become "1852.5"
    stream(" It")
    assert "".join(shown) == "1852. It"
    stream(" stands")
    assert "".join(shown) == "1852. It stands"  # then every piece as it comes
    assert restatement_end("The museum was", "When was the museum founded?", complete=False) is None


@pytest.mark.parametrize("question, answer, echoes", [
    ("What dynasty came before the Yuan?", "Yuan", True),
    ("What dynasty came before the Yuan?", "the Yuan dynasty", True),
    ("What dynasty came before the Yuan?", "Song dynasty", False),
    ("Which is more costly, formal or informal imperialism?", "informal", False),  # a choice: the answer is asked
    ("What does the document say?", NOT_IN_DOCUMENT, False),
    ("Who?", "", False),
])
def test_an_answer_of_the_questions_words_alone_echoes_it(question, answer, echoes):
    assert echoes_question(answer, question) is echoes
