"""infini ask: evidence scoring, the bounded pool, provenance, answer modes, CLI errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from infini_cli.checkpoint import load_checkpoint, read_header, read_tensors, save_tensors
from infini_cli.cli import app
from infini_cli.tasks.ask import check_question, rank_passages
from infini_cli.tasks.ask_scoring import AskPool, QuestionScorer, answer_type, has_answer_type
from infini_cli.tasks.passages import DocumentIndex, Passage, SentenceFeed, passages_of_text
from infini_cli.tasks.lexical import terms
from infini_cli.tasks.writer import NOT_IN_DOCUMENT
from tests.pdf_factory import make_pdf

from .conftest import assert_one_line_error

runner = CliRunner()

FILLER = [
    "The river ran slowly past the old mill and under the stone bridge.",
    "Farmers brought their grain to the market every week in autumn.",
    "The committee discussed the budget but reached no decision that day.",
    "Children played in the square while the band practised its marches.",
    "A new road was planned to join the village with the town in the valley.",
]
ANSWER = "The bridge over the river was built in 1843 by the engineer Thomas Telford."


def document(n_filler: int = 40, answer_at: int = 25) -> str:
    lines = [FILLER[i % len(FILLER)] for i in range(n_filler)]
    lines.insert(answer_at, ANSWER)
    return "\n".join(lines) + "\n"


def run(*args, input=None):
    return runner.invoke(app, list(map(str, args)), input=input)


def index_of(passages: list[Passage]) -> DocumentIndex:
    idx = DocumentIndex()
    for p in passages:
        idx.add(p)
    return idx


# ----------------------------------------------------------------------------- scoring

@pytest.mark.parametrize("question", [
    "When was the bridge built?",
    "Who built the bridge over the river?",
    "In what year was the bridge over the river built?",
])
def test_the_sentence_holding_the_answer_wins(question):
    ps = passages_of_text(document())
    best = rank_passages(question, ps, index_of(ps), top_k=3)
    assert best[0].text == ANSWER
    assert best[0].score > best[1].score


def test_answer_types():
    assert answer_type("When did it open?") == "time"
    assert answer_type("How many people came?") == "number"
    assert answer_type("Who signed the treaty?") == "person"
    assert answer_type("Why did it fail?") is None
    assert has_answer_type("time", "It opened in March.") and has_answer_type("time", "It opened in 1901.")
    assert not has_answer_type("time", "It opened late.")
    assert has_answer_type("number", "About 40 people came.")
    assert has_answer_type("person", "The treaty was signed by Castlereagh.")
    assert not has_answer_type("person", "Castlereagh signed it.")  # a capital at the start is no evidence


def test_answer_type_breaks_a_tie():
    ps = passages_of_text("The bridge was opened with a parade. The bridge was opened in 1843.")
    best = rank_passages("When was the bridge opened?", ps, index_of(ps), top_k=2)
    assert "1843" in best[0].text


def test_a_sentence_that_is_a_question_does_not_win():
    text = ("\"What do you know of Professor Challenger?\" The editor looked up. "
            "Professor Challenger is a zoologist who went to South America.")
    ps = passages_of_text(text)
    best = rank_passages("Who is Professor Challenger?", ps, index_of(ps), top_k=2)
    assert best[0].text.startswith("Professor Challenger is")


def test_pool_is_bounded_and_keeps_the_answer():
    """A long document with statistics that only settle late: the pool stays small and the answer wins."""
    q = QuestionScorer("Who built the bridge over the river?")
    pool = AskPool(q, size=32, sample=16)
    idx = DocumentIndex()
    k = 0
    for rep in range(600):
        for text in FILLER + ([ANSWER] if rep == 50 else []):
            p = Passage(text, k, 0, None, k + 1, terms(text))
            k += 1
            idx.add(p)
            pool.add(p, idx.stats)
            assert len(pool) <= 32 + 17
    best = pool.ranked(idx.stats)[0]
    assert best.text == ANSWER and best.line == 51 * len(FILLER) + 1


def test_sentence_feed_cuts_chunks_at_page_changes(tmp_path, tiny_checkpoint):
    from infini_cli.tasks.reading import read_document

    p = make_pdf(tmp_path / "r.pdf", pages=4)
    loaded = load_checkpoint(tiny_checkpoint)
    got = []
    feed = SentenceFeed(got.append)
    read_document(loaded, p, quiet=True, on_chunk=feed)
    feed.finish()
    pages = {s.page for s in got if "minute3" in s.text}
    assert pages == {3}
    assert [s.page for s in got] == sorted(s.page for s in got)
    assert {s.page for s in got} == {1, 2, 3, 4}


def test_question_gain_runs_in_one_batch(tiny_checkpoint):
    """The benchmark's model rerank (benchmarks/model_scores.py) still runs on a real model."""
    from benchmarks.model_scores import question_gain
    from infini_cli.memory import StreamState

    loaded = load_checkpoint(tiny_checkpoint)
    ps = passages_of_text(document(n_filler=4, answer_at=2))
    state = StreamState.empty(loaded.config)
    gains = question_gain(loaded, state, ps, "Who built the bridge?")
    assert len(gains) == len(ps) and all(g == g for g in gains)  # finite, no NaN


def test_empty_question_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        check_question("   \n ")


# ----------------------------------------------------------------------------- command line

def test_ask_text_json_with_line_numbers(tmp_path, tiny_checkpoint):
    p = tmp_path / "notes.txt"
    p.write_text(document())
    r = run("ask", p, "When was the bridge built?", "--model", tiny_checkpoint, "--json", "--top-k", 2)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    for key in ("answer", "evidence", "tokens", "seconds", "model", "device", "cached", "mode"):
        assert key in data
    assert data["mode"] == "extractive" and data["answer"] == ANSWER
    assert len(data["evidence"]) == 2
    top = data["evidence"][0]
    assert top["text"] == ANSWER and top["page"] is None and top["line"] == 26
    assert isinstance(top["score"], float) and data["tokens"] > 0 and data["cached"] is False


def test_ask_pdf_cites_pages(tmp_path, tiny_checkpoint):
    from tests.pdf_factory import page_text

    texts = [page_text(i + 1) for i in range(5)]
    texts[3] += " The treasurer, Mr. Hobbes, resigned in 1921 after the audit."
    p = make_pdf(tmp_path / "report.pdf", texts=texts, pages=5)
    r = run("ask", p, "When did the treasurer resign?", "--model", tiny_checkpoint, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["pages"] == 5
    assert data["evidence"][0]["page"] == 4 and "resigned in 1921" in data["evidence"][0]["text"]
    assert all(isinstance(e["page"], int) and isinstance(e["line"], int) for e in data["evidence"])


def test_ask_rich_output(tmp_path, tiny_checkpoint):
    p = tmp_path / "notes.txt"
    p.write_text(document())
    r = run("ask", p, "Who built the bridge?", "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    assert ANSWER in " ".join(r.stdout.split())
    assert "Evidence" in r.stdout and "line 26" in r.stdout and "extractive" in r.stdout


def test_ask_stdin_is_not_cached(tiny_checkpoint, cache_dir):
    r = run("ask", "-", "Who built the bridge?", "--model", tiny_checkpoint, "--json", input=document().encode())
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["answer"] == ANSWER and data["cached"] is False
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_generated_mode_with_a_capable_checkpoint(tmp_path, tiny_checkpoint):
    h = read_header(tiny_checkpoint)
    capable = tmp_path / "capable.safetensors"
    save_tensors(capable, read_tensors(tiny_checkpoint), h.config, h.tokenizer_json, h.quant,
                 {**h.training, "generates_answers": True})
    p = tmp_path / "notes.txt"
    p.write_text(document())
    r = run("ask", p, "Who built the bridge?", "--model", capable, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["mode"] == "generated" and isinstance(data["answer"], str)
    assert data["evidence"][0]["text"] == ANSWER  # the evidence is the same whatever writes the answer


@pytest.mark.parametrize("question", ["", "   "])
def test_empty_question_is_a_clean_error(tmp_path, tiny_checkpoint, question):
    p = tmp_path / "notes.txt"
    p.write_text(document())
    assert_one_line_error(run("ask", p, question, "--model", tiny_checkpoint), 2, "question is empty")


def test_missing_file_is_a_clean_error(tmp_path, tiny_checkpoint):
    assert_one_line_error(run("ask", tmp_path / "nope.pdf", "Why?", "--model", tiny_checkpoint), 2,
                          "nope.pdf", "no such file")


def test_bad_top_k(tmp_path, tiny_checkpoint):
    p = tmp_path / "notes.txt"
    p.write_text(document())
    assert_one_line_error(run("ask", p, "Why?", "--top-k", 0, "--model", tiny_checkpoint), 2, "--top-k")


def test_no_match_says_so(tmp_path, tiny_checkpoint):
    p = tmp_path / "notes.txt"
    p.write_text(document())
    r = run("ask", p, "Xylophones?", "--model", tiny_checkpoint, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["answer"] == NOT_IN_DOCUMENT and data["mode"] == "absent" and not data["answered"]
    assert data["evidence"] == []
    assert data["unmentioned"] == ["xylophones"] and "xylophones" in data["warnings"][-1]


def test_question_coverage_weighs_the_words_a_document_never_uses():
    from infini_cli.tasks.ask_scoring import question_coverage, unmentioned_words

    stats = index_of(passages_of_text(document())).stats
    assert question_coverage("When was the bridge built?", stats) == (1.0, [])
    assert question_coverage("Who?", stats) == (1.0, [])  # nothing to weigh: never "absent"
    assert question_coverage("Xylophones and kazoos?", stats) == (0.0, ["xylophones", "kazoos"])
    # one common word of the document ("river") does not save a question about something else
    coverage, unused = question_coverage("Who painted the Mona Lisa near the river?", stats)
    assert 0 < coverage < 0.4 and unused == ["painted", "mona", "lisa", "near"]
    assert unmentioned_words("Who painted the Mona Lisa near the river?", stats) == unused
    # one missing name among well-covered rare words: answered, the rest of it is there
    assert unmentioned_words("When was the bridge built by Telford in Wales?", stats) is None


def test_a_word_the_document_uses_in_another_inflection_is_not_missing():
    """The light stemmer keeps "died" apart from "die"; the rule on the question's words does not."""
    from infini_cli.tasks.ask_scoring import question_coverage
    from infini_cli.tasks.lexical import stem

    stats = index_of(passages_of_text("Nikola Tesla died in New York in 1943. He moved there in 1884.")).stats
    assert stem("died") != stem("die")
    assert question_coverage("When did Tesla die?", stats) == (1.0, [])
    assert question_coverage("Where did Tesla move?", stats) == (1.0, [])
    # a different word that only shares a beginning is still missing
    assert question_coverage("When did Tesla diet?", stats)[1] == ["diet"]
    assert question_coverage("Who was Tesla's dietician?", stats)[1] == ["dietician"]


@pytest.mark.parametrize("question, about_a_name", [
    ("Who is Professor Challenger?", True), ("What was the Great Exhibition?", True),
    ("What is Engineering News-Record?", True), ("Who is the chair of the IPCC?", False),
    ("What is Tesla's home country?", False), ("What is north of the garden?", False),
    ("What is the bathroom south of?", False), ("What is enzootic?", False), ("Where is Mary?", False)])
def test_a_question_asks_what_a_name_is_only_when_its_subject_is_a_name(question, about_a_name):
    from infini_cli.tasks.ask_scoring import asks_about_a_name

    assert asks_about_a_name(question) is about_a_name


def test_who_is_questions_prefer_a_defining_sentence():
    from infini_cli.tasks.ask_scoring import definition_pattern

    p = definition_pattern("Who is Professor Challenger?")
    assert p.search('"Professor Challenger, the famous zoologist!')
    assert p.search("Professor Challenger was a man of great size.")
    assert not p.search("Professor Challenger answered that they had.")
    assert not p.search("in the handwriting of Professor Challenger, were the words")
    assert definition_pattern("Where is Mary?") is None
    stats = DocumentIndex()
    texts = ["Professor Challenger answered that they had.", "Professor Challenger, the famous zoologist, laughed."]
    ps = passages_of_text(" ".join(texts))
    for x in ps:
        stats.add(x)
    scorer = QuestionScorer("Who is Professor Challenger?")
    s = {x.text: scorer.score(x, stats.stats) for x in ps}
    assert s[texts[1]] > s[texts[0]]


def test_a_sentence_broken_by_a_page_goes_on_over_the_break(tmp_path, tiny_checkpoint):
    """A PDF page that ends mid-sentence does not cut the sentence in two (the page
    separator is a blank line, which elsewhere ends a paragraph)."""
    from infini_cli.tasks.reading import read_document

    texts = ["The heir arrived in the spring. He had inherited Temple Barholm, it",
             "is for any one to say why. The house stood empty.",
             "Chapter Two",
             "A new page begins here. It ends properly."]
    p = make_pdf(tmp_path / "broken.pdf", pages=4, texts=texts)
    loaded = load_checkpoint(tiny_checkpoint)
    got = []
    feed = SentenceFeed(got.append)
    read_document(loaded, p, quiet=True, on_chunk=feed)
    feed.finish()
    by_text = {s.text: s.page for s in got}
    assert by_text["He had inherited Temple Barholm, it is for any one to say why."] == 1
    assert by_text["The house stood empty."] == 2
    # a page that ends a sentence still ends it; a heading page stays a passage of its own
    assert by_text["Chapter Two"] == 3 and by_text["A new page begins here."] == 4


STORY = ["Mary went to the kitchen.", "Daniel went to the hallway.", "Daniel picked up the football there.",
         "Sandra journeyed to the office.", "Daniel went to the kitchen.", "Mary moved to the garden.",
         "Daniel travelled to the bedroom.", "Sandra went back to the hallway."]


def test_bridge_terms_are_the_names_the_evidence_adds():
    from infini_cli.tasks.ask_scoring import bridge_terms

    ps = passages_of_text(" ".join(STORY * 3 + ["Filler words go on here."] * 60))
    index = index_of(ps)
    first = [p for p in ps if "football" in p.text][:1]
    assert bridge_terms("Where is the football?", first) == ["daniel"]
    # a name the question already has is not a bridge
    assert bridge_terms("Where is Daniel?", first) == []


def test_second_hop_finds_the_latest_sentence_one_name_away():
    """"Where is the football?": the best evidence names Daniel; the answer is the last place
    Daniel went, a sentence that does not mention the football."""
    from infini_cli.tasks.ask_scoring import second_hop

    filler = [f"The rain fell on roof number {i} all night." for i in range(40)]
    ps = passages_of_text(" ".join(filler[:20] + STORY + filler[20:]))
    index = index_of(ps)
    first = rank_passages("Where is the football?", ps, index, top_k=3)
    assert "football" in first[0].text
    hop = second_hop("Where is the football?", first, ps, index.stats, k=3)
    assert hop[0].text == "Daniel travelled to the bedroom."
    assert all("Daniel" in p.text for p in hop) and first[0].index not in {p.index for p in hop}
    assert second_hop("Where is the football?", [], ps, index.stats, k=3) == []


@pytest.mark.parametrize("question, text, lacks", [
    ("Where is the football?", "Daniel picked up the football.", True),
    ("Where is the football?", "Daniel went to the garden.", False),
    ("When did the plague end?", "The population did not recover until the 17th century.", False),
    ("When did the plague end?", "The plague ended when the rats were gone.", True),
    ("How many representatives does each electorate have?", "Each is represented by five members.", False),
    ("How many porters were there?", "The porters reached the lake.", True),
    ("Who manages a construction job?", "An architect manages the job.", False),  # never lacking
    ("What is north of the garden?", "The kitchen is south of the hall.", False),
])
def test_what_the_best_evidence_lacks_decides_a_second_hop(question, text, lacks):
    from infini_cli.tasks.ask_scoring import lacks_what_is_asked

    assert lacks_what_is_asked(question, text) is lacks
