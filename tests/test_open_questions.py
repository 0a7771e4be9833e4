"""Open questions: which they are, their subject, the focused selection, ask's long answers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from infini_cli.cli import app
from infini_cli.tasks.ask import rank_passages
from infini_cli.tasks.open_questions import (answer_length, answer_open, focused_selection, is_open_question,
                                             subject_question)
from infini_cli.tasks.passages import DocumentIndex, passages_of_text
from infini_cli.tasks.summary_scoring import Budget, SummaryPool, select_summary

from .conftest import assert_one_line_error

runner = CliRunner()

STORY = [
    "Captain Mora took command of the old freighter at the spaceport of Venus.",
    "The crew doubted her, because the freighter had failed every inspection for ten years.",
    "Ellen Vance, the ship's engineer, had built its strange engine from spare parts.",
    "A storm of meteors struck the convoy three days out from Venus.",
    "Ellen Vance kept the engine running through the storm while the others slept.",
    "The admiral sent a signal that the convoy should turn back to the spaceport.",
    "Mora refused the order and took the freighter through the storm alone.",
    "The engine that Ellen Vance had built carried the freighter to the stranded colony.",
    "The colonists cheered when the freighter landed with food and medicine.",
    "At the end, the admiral gave Mora a medal and made Ellen Vance chief engineer of the fleet.",
]


def story(repeat: int = 3) -> str:
    return "\n".join(" ".join(STORY[i:i + 2]) for r in range(repeat) for i in range(0, len(STORY), 2)) + "\n"


@pytest.mark.parametrize("question", [
    "Describe the setting of the story.",
    "Who is Ellen Vance, and what happens to her?",
    "What is the relationship between Mora and the admiral?",
    "What happens to the freighter?",
    "What is the significance of the engine in the story?",
    "How does Mora feel about the admiral?",
    "Who is Arth, and what are his characteristics?",
    "Where does the story take place?",
    "What are the features of the engine? Why do they matter?",
    "Please explain why the convoy turned back.",
    "What settings does the story take place in?",
    "What is the main setting of the story",
    "What role does the admiral play?",
    "How is the engine used in the story?",
    "What effect does Mora have on the story?",
    "What happens at the spaceport, and why?",
    "What are some of the things the crew doubts?",
    "What does the storm reveal about Mora?",
    "What is the freighter a symbol of?",
    "What is the engine and its significance?",
])
def test_open_questions_ask_for_an_account(question):
    assert is_open_question(question)
    assert answer_length(question, "auto") == "open"


@pytest.mark.parametrize("question", [
    "When did the committee meet?",
    "Who built the bridge?",
    "Who is Professor Challenger?",
    "Who created the theme used in 1986?",            # a word of a story's parts, but a factoid
    "Between Brakel and what other city is the tide felt?",
    "Who is Antigone's father in the play?",
    "How many porters reached the lake?",
    "Which engines were used throughout the 20th century?",
    "Who is the narrator of the story?",              # a person of the story, by name
    "What is the name of the dog in the story?",
    "How many ships are in the story?",
    "What country uses the Bowl of Hygieia as a symbol of pharmacy?",
])
def test_factoid_questions_get_a_short_answer(question):
    assert not is_open_question(question)
    assert answer_length(question, "auto") == "short"


def test_the_choice_can_be_forced_and_an_unknown_one_is_refused():
    assert answer_length("When did the committee meet?", "long") == "open"
    assert answer_length("Describe the setting.", "short") == "short"
    assert answer_length("Describe the setting.", "longer") is None


def test_the_subject_of_an_open_question_drops_its_framing_words():
    assert subject_question("Describe the setting of the story.") == "the of the"
    assert subject_question("What is the relationship between Mora and the admiral throughout the story?").split() == \
        ["what", "is", "the", "between", "mora", "and", "the", "admiral", "the"]


def _read(text: str):
    ps = passages_of_text(text)
    index = DocumentIndex()
    for p in ps:
        index.add(p)
    pool = SummaryPool()
    for p in ps:
        pool.add(p, index)
    return ps, index, pool.candidates()


def test_the_focused_selection_leans_towards_the_question_and_keeps_document_order():
    ps, index, candidates = _read(story())
    budget = Budget(words=40)
    ranked = rank_passages(subject_question("What happens to Ellen Vance?"), ps, index, 64)
    focused = focused_selection(candidates, ranked, index, budget)
    generic = select_summary(candidates, index, budget)
    about = lambda sel: sum("Ellen" in p.text for p in sel)  # noqa: E731
    assert about(focused) > about(generic)
    assert [p.index for p in focused] == sorted(p.index for p in focused)
    # without evidence (a question of framing words only) it is the summary's own selection
    assert [p.index for p in focused_selection(candidates, [], index, budget)] == [p.index for p in generic]


def test_evidence_short_of_the_budget_is_all_taken_and_the_summary_fills_the_rest():
    """In a book the few sentences about what was asked come first, whatever the summary's
    own best sentences score."""
    ps, index, candidates = _read(story(4) + "A dragon named Smaug slept in the hills above the spaceport.\n")
    ranked = rank_passages(subject_question("What happens to Smaug?"), ps, index, 64)
    assert [p.text for p in ranked] == ["A dragon named Smaug slept in the hills above the spaceport."]
    chosen = focused_selection(candidates, ranked, index, Budget(words=60))
    assert ranked[0].index in {p.index for p in chosen}
    assert 60 <= sum(len(p.text.split()) for p in chosen) < 60 + 25
    assert [p.index for p in chosen] == sorted(p.index for p in chosen)


def test_an_extractive_open_answer_is_cut_to_the_words_and_streams_what_it_returns():
    ps, index, candidates = _read(story())
    ranked = rank_passages(subject_question("What happens to Ellen Vance?"), ps, index, 64)
    shown: list[str] = []
    text, chosen, sections = answer_open("What happens to Ellen Vance?", candidates, ranked, index, 30,
                                         on_text=shown.append)
    assert len(text.replace(" …", "").split()) == 30 and "".join(shown) == text
    assert chosen and sections == []
    assert text.startswith(chosen[0].text.split()[0])


def test_ask_answers_an_open_question_long_and_a_factoid_short(tmp_path, tiny_checkpoint):
    doc = tmp_path / "story.txt"
    doc.write_text(story())
    r = runner.invoke(app, ["ask", str(doc), "What happens to Ellen Vance?", "--model", str(tiny_checkpoint),
                            "--words", "30", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["answer_kind"] == "open" and data["mode"] == "extractive"
    assert len(data["answer"].replace(" …", "").split()) == 30 and len(data["evidence"]) > 1
    lines = [e["line"] for e in data["evidence"]]
    assert lines == sorted(lines)
    r = runner.invoke(app, ["ask", str(doc), "Who built the engine?", "--model", str(tiny_checkpoint), "--json"])
    data = json.loads(r.stdout)
    assert data["answer_kind"] == "short" and data["answer"] == data["evidence"][0]["text"]
    # --answer long makes a factoid long too
    r = runner.invoke(app, ["ask", str(doc), "Who built the engine?", "--answer", "long", "--words", "20",
                            "--model", str(tiny_checkpoint), "--json"])
    assert json.loads(r.stdout)["answer_kind"] == "open"


def test_an_open_question_is_turned_away_only_for_a_name_the_document_never_uses(tmp_path, tiny_checkpoint):
    doc = tmp_path / "story.txt"
    doc.write_text(story())
    # the story never says "describe", "setting" or "story": still answered
    r = runner.invoke(app, ["ask", str(doc), "Describe the setting of the story.", "--model", str(tiny_checkpoint),
                            "--json"])
    data = json.loads(r.stdout)
    assert data["mode"] == "extractive" and data["answer_kind"] == "open" and data["answer"]
    # nor do abstract words it never uses ("technology", "society")
    r = runner.invoke(app, ["ask", str(doc), "What is the role of technology in this society?", "--model",
                            str(tiny_checkpoint), "--json"])
    assert json.loads(r.stdout)["mode"] == "extractive"
    # but a name it never uses does: the answer would be about something else
    r = runner.invoke(app, ["ask", str(doc), "Describe the dragon Smaug and his hoard.", "--model",
                            str(tiny_checkpoint), "--json"])
    data = json.loads(r.stdout)
    assert data["mode"] == "absent" and data["unmentioned"] == ["Smaug"]


@pytest.mark.parametrize("args,words", [(["--answer", "longer"], ["--answer", "auto"]), (["--words", "5"], ["--words"])])
def test_bad_answer_options_are_one_line_errors(tmp_path, tiny_checkpoint, args, words):
    doc = tmp_path / "story.txt"
    doc.write_text(story())
    r = runner.invoke(app, ["ask", str(doc), "What happens to Ellen?", *args, "--model", str(tiny_checkpoint)])
    assert_one_line_error(r, 2, *words)


def test_unknown_names_are_the_capitalised_words_after_a_sentences_first_that_the_document_never_uses():
    from infini_cli.tasks.ask_scoring import unknown_names
    from infini_cli.tasks.lexical import DocumentStats, terms

    stats = DocumentStats()
    stats.add(terms("Ellen Vance built the engine that Mora's freighter needed."))
    assert unknown_names("Describe the dragon Smaug and Ellen.", stats) == ["Smaug"]
    assert unknown_names("What is Mora's role, and how does Ellen Vance help her?", stats) is None
    # a sentence's first word is no name ("Q4. Describe ..."); "The" is a stop word
    assert unknown_names("Q4. Describe The setting. Why is it important?", stats) is None


def test_a_name_one_letter_off_is_read_in_the_documents_spelling():
    from infini_cli.tasks.ask_scoring import document_forms, respell, respelled_names
    from infini_cli.tasks.lexical import DocumentStats, terms

    stats = DocumentStats()
    for line in STORY:
        stats.add(terms(line))
    names = respelled_names("What happens to Ellen Vanse's ship, Mroa and the Admirl? And Mora? And Frieghters?", stats)
    # a letter changed, one fewer, two swapped; "Mroa" is under five letters, Mora the story's own
    assert names == {"Vanse": terms("Vance")[0], "Admirl": terms("admiral")[0], "Frieghters": terms("freighter")[0]}
    # a name with no near spelling is left for the absent rule
    assert respelled_names("Describe the dragon Smaug.", stats) == {}
    passages = passages_of_text(story(1))
    forms = document_forms(names, passages)
    assert forms == {"Vanse": "Vance", "Admirl": "admiral", "Frieghters": "freighter"}
    assert respell("Did Ellen Vanse see the Admirl? Vanse's?", forms) == "Did Ellen Vance see the admiral? Vance's?"


def test_ask_reads_a_misspelled_name_as_the_document_writes_it(tmp_path, tiny_checkpoint):
    doc = tmp_path / "story.txt"
    doc.write_text(story())
    args = ["--model", str(tiny_checkpoint), "--json"]
    asked = "What did Ellen Vance keep running through the storm?"
    right = json.loads(runner.invoke(app, ["ask", str(doc), asked, *args]).stdout)
    r = runner.invoke(app, ["ask", str(doc), "What did Ellen Vanse keep running through the storm?", *args])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["question"] == asked and data["mode"] != "absent"
    assert any("Vanse" in w for w in data["warnings"])
    assert data["evidence"] == right["evidence"]
    # an open question too (it would otherwise be turned away for the name)
    data = json.loads(runner.invoke(app, ["ask", str(doc), "What happens to Ellen Vanse?", *args]).stdout)
    assert data["mode"] == "extractive" and data["answer_kind"] == "open" and "Vance" in data["question"]
