"""infini summarize: selection, budgets, the bounded region pool, provenance, CLI errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from infini_cli.cli import app
from infini_cli.tasks.passages import DocumentIndex, Passage, passages_of_text
from infini_cli.tasks.summary_scoring import (Budget, SummaryPool, fit_budget, select_summary, summary_eligible,
                                              summary_text)
from infini_cli.tasks.lexical import terms
from infini_cli.tasks.summarize import check_budget, summarize_passages
from tests.pdf_factory import make_pdf

from .conftest import assert_one_line_error

runner = CliRunner()

STORY = [
    "Captain Mara Vell took command of the old freighter Aphrodite at Venusport.",
    "The crew of the Aphrodite did not trust their new captain at first.",
    "Mara Vell found that the engines of the freighter were failing.",
    "\"We will never make it,\" somebody muttered.",
    "The engineer Dana Koss rebuilt the engines of the Aphrodite in three days.",
    "A distress call came from a colony ship lost near Jupiter.",
    "Mara Vell and Dana Koss flew the Aphrodite to Jupiter to rescue the colony ship.",
    "The rebuilt engines of the Aphrodite saved the colony ship and its people.",
    "[Transcriber's Note: This etext was produced from Planet Stories Winter 1948.]",
    "Ok.",
]


def run(*args, input=None):
    return runner.invoke(app, list(map(str, args)), input=input)


def index_of(passages):
    idx = DocumentIndex()
    for p in passages:
        idx.add(p)
    return idx


def story_text(repeat: int = 3) -> str:
    return "\n\n".join(" ".join(STORY) for _ in range(1)) + "\n" + "\n".join(
        f"Filler line {i} about nothing in particular happened here today." for i in range(repeat))


def test_eligibility_drops_boilerplate_and_fragments():
    assert not summary_eligible(STORY[8]) and not summary_eligible("Ok.")
    assert summary_eligible(STORY[0])


def test_selection_prefers_central_narrative_and_keeps_document_order():
    ps = passages_of_text(" ".join(STORY))
    chosen = select_summary(ps, index_of(ps), Budget(sentences=3))
    assert len(chosen) == 3
    assert [p.index for p in chosen] == sorted(p.index for p in chosen)
    texts = " ".join(p.text for p in chosen)
    assert "Aphrodite" in texts and "Transcriber" not in texts and "muttered" not in texts


def test_word_budget_is_filled_exactly():
    ps = passages_of_text(" ".join(STORY))
    chosen = select_summary(ps, index_of(ps), Budget(words=30))
    text = summary_text(chosen, Budget(words=30))
    assert len(text.replace(" …", "").split()) == 30
    assert sum(len(p.text.split()) for p in chosen) >= 30
    shown_text, shown = fit_budget(chosen, Budget(words=30))
    assert shown_text == text and shown == chosen[:len(shown)]
    assert all(" ".join(p.text.split()[:3]) in text for p in shown)  # every cited sentence is in the summary
    assert fit_budget(chosen, Budget(words=5))[1] == chosen[:1]


def test_region_pool_is_bounded_and_covers_the_whole_document():
    pool = SummaryPool(per_region=4, max_regions=16, region=8)
    idx = DocumentIndex()
    n = 20_000
    for k in range(n):
        text = f"Mara Vell crossed sector {k % 97} of the belt with the Aphrodite and her crew."
        p = Passage(text, k, 0, None, k + 1, terms(text))
        idx.add(p)
        pool.add(p, idx)
        assert len(pool) <= 4 * 17
    where = sorted(p.index for p in pool.candidates())
    assert where[0] < n // 10 and where[-1] > n * 9 // 10  # beginning and end of the arc are both there
    chosen = select_summary(pool.candidates(), idx, Budget(sentences=5))
    assert len(chosen) == 5


def test_summarize_passages_falls_back_when_nothing_is_eligible():
    ps = passages_of_text("Yes. No. Go home now.")
    assert summarize_passages(ps, index_of(ps), Budget(sentences=1))


def test_budget_checks():
    assert check_budget(None, None).words == 200
    assert check_budget(None, 4).sentences == 4
    with pytest.raises(ValueError):
        check_budget(100, 4)
    with pytest.raises(ValueError):
        check_budget(0, None)


# ----------------------------------------------------------------------------- command line

def test_summarize_text_json(tmp_path, tiny_checkpoint):
    p = tmp_path / "story.txt"
    p.write_text(story_text())
    r = run("summarize", p, "--model", tiny_checkpoint, "--json", "--words", 40)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    for key in ("summary", "evidence", "tokens", "seconds", "model", "device", "cached", "mode"):
        assert key in data
    assert data["mode"] == "extractive" and data["words"] == 40
    lines = p.read_text().splitlines()
    for e in data["evidence"]:
        assert e["page"] is None and e["text"].split()[0] in lines[e["line"] - 1]


def test_summarize_sentences_and_pdf_pages(tmp_path, tiny_checkpoint):
    p = make_pdf(tmp_path / "report.pdf", pages=6)
    r = run("summarize", p, "--model", tiny_checkpoint, "--json", "--sentences", 3)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert len(data["evidence"]) == 3
    for e in data["evidence"]:
        assert isinstance(e["page"], int) and str(e["page"]) in e["text"]


def test_summarize_rich_output(tmp_path, tiny_checkpoint):
    p = tmp_path / "story.txt"
    p.write_text(story_text())
    r = run("summarize", p, "--model", tiny_checkpoint, "--sentences", 2)
    assert r.exit_code == 0, r.output
    assert "line " in r.stdout and "extractive" in r.stdout


def test_words_and_sentences_together_is_an_error(tmp_path, tiny_checkpoint):
    p = tmp_path / "story.txt"
    p.write_text(story_text())
    assert_one_line_error(run("summarize", p, "--words", 10, "--sentences", 2, "--model", tiny_checkpoint), 2,
                          "--words", "--sentences")


def test_summarize_missing_file(tmp_path, tiny_checkpoint):
    assert_one_line_error(run("summarize", tmp_path / "gone.txt", "--model", tiny_checkpoint), 2, "gone.txt")


def test_sections_are_even_and_a_leftover_joins_the_last_one(tiny_checkpoint):
    from infini_cli.checkpoint import load_checkpoint
    from infini_cli.tasks.summarize import sections_of

    loaded = load_checkpoint(tiny_checkpoint)
    tok = loaded.tokenizer
    body = " ".join(f"The keeper of lamp number {i} walked the long road home at dusk." for i in range(9))
    chosen = passages_of_text(body + " It rained.")
    sizes = {p.text: len(tok.encode(p.text)) for p in chosen}
    groups = sections_of(loaded, chosen, 3)
    assert [p for g in groups for p in g] == chosen  # every sentence once, in order
    assert len(groups) == 3 and chosen[-1] in groups[-1] and len(groups[-1]) > 1  # not a section of its own
    groups = sections_of(loaded, chosen, 3, max_tokens=max(sizes.values()) * 2)
    assert all(sum(sizes[p.text] for p in g) <= max(sizes.values()) * 2 for g in groups)


def test_a_written_part_ends_at_a_sentence_end_or_is_marked_cut():
    from infini_cli.tasks.summarize import _cut_to_words

    assert _cut_to_words("One two three four five. Six seven", 10) == "One two three four five."
    assert _cut_to_words("One two three. Four five six seven", 10) == "One two three. Four five six seven …"
    assert _cut_to_words('He said "go." Then he left.', 10) == 'He said "go." Then he left.'
    assert _cut_to_words("A b c d e f. G h i j k l m", 8) == "A b c d e f."
    assert _cut_to_words("A b c d e f g h i j", 4) == "A b c d …"


def test_tidy_drops_repeated_and_degenerate_sentences():
    from infini_cli.tasks.summarize import _tidy

    text = ("Noork ran, and Noork fought, and Noork won. The scene: A scene of a scene. "
            "Noork ran, and Noork fought, and Noork won. The Skull, the priests, and the prison.")
    assert _tidy(text) == "Noork ran, and Noork fought, and Noork won. The Skull, the priests, and the prison."
