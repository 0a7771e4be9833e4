"""Open questions: "Describe the setting", "Who is Ellen and how does she affect Thig?".

A factoid question ("When did the committee meet?") is answered by a phrase from the best
evidence sentence. An open one asks for what many sentences of the document say together: its
answer is a short summary focused on the question, written (or, without a writer, chosen) from
the question's best evidence sentences, chosen among by the summary's score (and, where they are
too few, the summary's own choice), in the document's order, each part with the pages or lines
it comes from.

Which is which is read from the question's wording (is_open_question): verbs that ask for a
description ("describe", "explain", "compare"), what happens to someone, the words that name a
story's parts ("relationship", "significance", "setting", "traits", "throughout", "what role
does X play"), what something is or does "in the story" (not who, when, which, how many or its
name), a list of the story's things ("What are some of the ..."), or a question in two parts
("Who is X, and what does she do?", "..., and why?"). Written from the wording of SQuALITY
train and dev's questions (266 of 300 read as open) and SQuAD dev's (55 of 10,570). The
wording that frames an open question ("describe", "story", "significance") is not what the
document must use to answer it: its subject terms are what is left (subject_question), and ask
turns one away only for a name the document never uses (ask_scoring.unknown_names).
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

from ..checkpoint import LoadedModel
from .lexical import words
from .passages import DocumentIndex, Passage
from .summarize import MATERIAL, MIN_MATERIAL_WORDS, section_request, write_summary
from .summary_scoring import Budget, fit_budget, select_summary, summary_eligible

_STORY = r"(?:story|novel|book|tale|narrative)"
_OPEN = re.compile(
    # a verb that asks for an account, at the start
    r"^(?:q\d+\.?\s*)?(?:please\s+)?(?:describe|explain|summari[sz]e|discuss|outline|compare|contrast|"
    r"characteri[sz]e|tell\s+me\s+about|what\s+do\s+we\s+(?:know|learn)\s+about)\b"
    # what a story's parts are: "What is the relationship between ...", "What was Mia's role?"
    r"|^what(?:['’]s|\s+(?:is|are|was|were))\s+(?:the\s+|[^?]*?['’]s?\s+)?(?:relationships?|significance|importance|roles?|"
    r"themes?|settings?|attitudes?|motivations?|personality|traits|characteristics)\b"
    r"|^what\s+(?:happens|happened)\s+(?:to|with|between)\b"
    r"|^how\s+(?:does|do|did|is|are|was|were)\s+[^?]+?\s+(?:feel|felt|change|changes|develop|develops|evolve|"
    r"evolves|interact|interacts|relate|relates|portrayed|explored|shift|shifts)\b"
    r"|^what\s+(?:is|are|was|were)\s+the\s+(?:main|central|primary)\s+(?:settings?|themes?|conflicts?)\b"
    r"|^what\s+settings?\b|^what\s+(?:roles?|relationships?)\s+(?:does|do|did)\b"
    r"|^what\s+(?:is|are|was|were)\b[^?]*\ba\s+symbol\s+of\b|\breveal\s+about\b"
    # a list of the story's things: "What are some of the dishes ...", "What are the features of ..."
    r"|^what\s+are\s+(?:some\s+of\s+the|the\s+features)\b"
    r"|\b(?:his|her|their|its)\s+(?:traits|characteristics)\b"
    r"|\band\s+(?:its|his|her|their)\s+(?:significance|importance|purpose)\b"
    rf"|\bthroughout\s+(?:the\s+)?{_STORY}\b"
    # what something is or does in the story, at the end: "How is slang used in the story?"
    # (not who, when or which, how many, nor the name of: "Who is the narrator of the story?")
    r"|^(?!who\b|whom\b|when\b|which\b|where\b|how\s+(?:many|much|old|long)\b"
    r"|what\s+(?:is|was)\s+the\s+(?:name|title)\b)"
    rf"[^?]*\b(?:in|to|on|of|for)\s+(?:the|this)\s+{_STORY}\W*$"
    rf"|^where\s+(?:does|did|is|was)\s+the\s+{_STORY}\s+(?:take\s+place|set|happen)"
    # a question in two parts: "Who is Ellen, and how does she affect Thig?", "... ? Why?"
    r"|^(?:who|what)\s+(?:is|are|was|were)\s+[^?]+?,?\s+and\s+(?:what|how|why)\b|,?\s+and\s+(?:why|how)\b"
    r"|\?\s*\S.*\?",
    re.IGNORECASE)

# The words that frame an open question rather than name what it is about.
FRAMING_WORDS = frozenset("""
describe explain summarize summarise discuss outline compare contrast characterize characterise tell know learn
please happen happens happened story stories novel book document text author reader plot chapter
relationship relationships significance significant importance important relevance relevant role roles trait
traits characteristic characteristics personality attitude attitudes motivation motivations theme themes
setting settings throughout portrayed portray explored explore affect affects change changes shift shifts
develop develops evolve evolves interact interacts relate relates take place set main feel feels
""".split())

# Sentences of the focused answer: the summary score plus FOCUS_WEIGHT x the question's
# evidence score (scaled so the best evidence sentence gets FOCUS_WEIGHT), over the best
# FOCUS_POOL evidence sentences, then the summary pool for what they leave of the budget
# (focused_selection). Chosen on SQuALITY train+dev (75 stories, questions 2-5, 300
# questions; ROUGE-L of the extractive answer against the four references; a scratch script
# over these functions, the stories split by passages_of_text): at 150 words
# 16.49 with the summary score alone, 14.42 with the evidence ranking alone, 16.93 / 17.17 /
# 17.13 / 17.02 at 0.25 / 0.5 / 1 / 2 (the whole question ranked); at 120 words 16.92 with the
# whole question ranked, 17.03 with its subject, 16.82 with only the evidence pool, all these
# over the summary pool and the evidence at once; 17.06 with the evidence first (shipped: on a
# novel, the summary's best sentences crowded out the 25 that name Gladys for "What happens
# to Gladys?" of The Lost World).
FOCUS_WEIGHT = 0.5
FOCUS_POOL = 64
OPEN_ANSWER_WORDS = 120
# How the writer answers: after each section's passages (summarize's system message and
# sections), OPEN_PROMPT "question" asks it to answer the question from them in its share of
# the words ("summary": summarize's own request), with a logit bias of OPEN_COPY_BIAS towards
# their words. SQuALITY dev (bench_writer.py --sections ask-stories --split dev; ROUGE-L of the
# long written answer / the share of its content words that neither the story nor the question
# uses, the human references' own share 28.5%; the selection then over both pools at once and
# the rule for phrases on open questions' subjects): 25 stories, 19.87 asking the question,
# 16.20 asking for a summary (37.2% and 22.2% of words the story never uses, the question's
# words counted); 10 stories, asking the question: 20.37 / 33.0% without the bias, 18.71 /
# 13.2% at +3 (shipped: the most ROUGE-L with at most half the references' share of such
# words), and with a system message that asks for an answer instead of a summary 20.63 /
# 29.2%, 19.45 / 16.5% at +2, 18.43 / 11.6% at +3; the extractive answer 16.54. As shipped
# (the evidence first, the rule for names), the same 10 stories: 20.14 / 12.5%, extractive 17.22.
OPEN_PROMPT = "question"
OPEN_REQUEST = "Using only these passages, answer in at most {words} words: "
OPEN_COPY_BIAS = 3.0


def is_open_question(question: str) -> bool:
    """True for a question that asks for a description or an account rather than a fact."""
    return bool(_OPEN.search(" ".join(question.split()).strip(" \"'")))


def subject_question(question: str) -> str:
    """The question's words without those that frame it ("Describe the setting of the story."
    -> "the of the"): what the document must use to answer it."""
    return " ".join(w for w in words(question) if w not in FRAMING_WORDS)


def focused_selection(summary_candidates: Sequence[Passage], ranked: Sequence[Passage], index: DocumentIndex,
                      budget: Budget, weight: float = FOCUS_WEIGHT) -> list[Passage]:
    """Sentences for an open question's answer, in document order, up to the budget (in words):
    first the summary's selection (select_summary) among the question's best evidence (`ranked`,
    best first, its scores the evidence score; the better evidence gets a bonus), then, where
    that holds fewer words than the budget (a rare name, a question of framing words only), the
    summary's own selection for the rest. In a book the summary's best sentences would
    otherwise crowd out the few about what was asked."""
    if budget.words is None:
        raise ValueError("an open answer's budget is in words")
    best = max((p.score for p in ranked), default=0.0)
    extra = {p.index: weight * p.score / best for p in ranked[:FOCUS_POOL]} if best > 0 else {}
    evidence = [p for p in ranked[:FOCUS_POOL] if summary_eligible(p.text)]
    chosen = select_summary(evidence, index, budget, extra=extra)
    left = budget.words - sum(len(p.text.split()) for p in chosen)
    if left > 0:
        taken = {p.index for p in chosen}
        rest = [p for p in summary_candidates if p.index not in taken]
        chosen = sorted(chosen + select_summary(rest, index, Budget(words=left), extra=extra), key=lambda p: p.index)
    return chosen


def answer_length(question: str, choice: str) -> Optional[str]:
    """"open" or "short" for --answer auto|long|short; None for an unknown choice."""
    if choice == "auto":
        return "open" if is_open_question(question) else "short"
    return {"long": "open", "short": "short"}.get(choice)


def open_request(question: str, prompt: Optional[str] = None) -> Callable[[int], str]:
    """What the writer is asked after each section's passages, given its share of the words
    (prompt: OPEN_PROMPT unless given)."""
    prompt = prompt or OPEN_PROMPT
    if prompt == "summary":
        return section_request
    if prompt != "question":
        raise ValueError(f"unknown open-answer prompt {prompt!r}")
    q = " ".join(question.split())
    return lambda n: OPEN_REQUEST.format(words=n) + q


def answer_open(question: str, summary_candidates: Sequence[Passage], ranked: Sequence[Passage],
                index: DocumentIndex, n_words: int = OPEN_ANSWER_WORDS, writer: Optional[LoadedModel] = None,
                on_text: Optional[Callable[[str], None]] = None,
                prompt: Optional[str] = None) -> tuple[str, list[Passage], list[dict]]:
    """An open question's answer, the sentences it comes from, and (written) its parts with
    their pages or lines. With a writer: written section by section, as summarize writes, from
    a focused selection of MATERIAL times the words; without: the focused selection itself, cut
    to the words."""
    budget = Budget(words=n_words)
    if writer is None:
        text, shown = fit_budget(focused_selection(summary_candidates, ranked, index, budget), budget)
        if on_text is not None and text:
            on_text(text)
        return text, shown, []
    material = Budget(words=max(MIN_MATERIAL_WORDS, MATERIAL * n_words))
    chosen = focused_selection(summary_candidates, ranked, index, material)
    if not chosen:
        return "", [], []
    text, sections = write_summary(writer, chosen, budget, on_text, open_request(question, prompt), OPEN_COPY_BIAS)
    return text, chosen, sections
