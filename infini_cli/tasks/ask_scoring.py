"""Ask's evidence score: which sentences of a document answer a question (lexical).

BM25 over stemmed, stop-word-free terms, plus shared term bigrams, plus an answer-type bonus
(a "when" question wants a year or a month, "how many" a number, "who" a capitalised name);
for "who/what is X" a bonus for a sentence that defines X; a sentence that is itself a
question counts half. Measured in benchmarks/bench_quality.py (numbers in the README). A
model rescoring of the best few (the likelihood of the question after a passage) moved
SQuAD top-1/top-3 by +0.1 point with the bundled model, noise: it lives in the benchmark
(benchmarks/model_scores.py), not here.

Bounded whatever the document's length: the pool keeps a fixed number of candidates; the
final ranking runs over the pool with the statistics of the whole document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from .lexical import DocumentStats, terms, words
from .passages import Passage, keep_best


_YEAR = re.compile(r"1\d{3}|20\d{2}")
_DIGIT = re.compile(r"\d")
_MONTHS = frozenset("january february march april may june july august september october november december".split())
# a capitalised word that does not start the sentence
_INNER_NAME = re.compile(r"(?<!^)(?<![.!?] )\b[A-Z][a-z]+")


def answer_type(question: str) -> Optional[str]:
    """"time", "number", "person" or None, from the question's wording."""
    q = " ".join(words(question))
    if q.startswith(("when", "what year", "in what year", "what date")) or " year " in f" {q} " or "what century" in q:
        return "time"
    if "how many" in q or "how much" in q or "percentage" in q:
        return "number"
    if q.startswith(("who", "whom", "whose")):
        return "person"
    return None


def has_answer_type(kind: Optional[str], text: str) -> bool:
    if kind is None:
        return False
    ws = words(text)
    if kind == "time":
        return any(_YEAR.fullmatch(w) for w in ws) or bool(_MONTHS.intersection(ws))
    if kind == "number":
        return any(_DIGIT.search(w) for w in ws) or "million" in ws
    return bool(_INNER_NAME.search(text))


# a place: a preposition of place before a word ("went to the garden", "in Paris")
_PLACE = re.compile(r"\b(?:in|at|to|into|inside|near|from|on|onto|toward|towards)\s+(?:the\s+|a\s+|an\s+)?\w",
                    re.IGNORECASE)


_NUMBER_WORDS = frozenset("""one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred hundreds thousand
thousands million millions billion billions dozen dozens half single double twice""".split())
_TIME_WORDS = _MONTHS | frozenset("""monday tuesday wednesday thursday friday saturday sunday century centuries decade
decades year years ago today yesterday tomorrow morning afternoon evening night spring summer autumn winter
before after during until since""".split())


def lacks_what_is_asked(question: str, text: str) -> bool:
    """The question asks for a place ("where"), a time or a number (answer_type) and the text
    holds none: "Where is the football?" of "Daniel picked up the football.". Broader than
    has_answer_type, which scores evidence ("five", "the 17th century" count here); "who" is
    never lacking (a person is often not a name: "An architect")."""
    kind = answer_type(question) or ("place" if words(question)[:1] == ["where"] else None)
    if kind == "place":
        return not _PLACE.search(text)
    if kind in ("time", "number"):
        ws = set(words(text))
        return not (_DIGIT.search(text) or ws & (_TIME_WORDS if kind == "time" else _NUMBER_WORDS))
    return False


_IS_QUESTION = re.compile(r"\?[\"'”’)\]]*\s*$")
_DEFINITION_QUESTION = re.compile(r"^\s*(?:who|what)\s+(?:is|was|are|were)\s+(?:the\s+|a\s+|an\s+)?(.+?)\s*\??\s*$",
                                  re.IGNORECASE)
_DETERMINER = r"(?:a|an|the|one|my|our|his|her|their|its)"


def _definition_subject(question: str) -> Optional[str]:
    """X of "Who is X?" / "What was the X?" (six words at most); None for other questions."""
    m = _DEFINITION_QUESTION.match(question)
    subject = m.group(1).strip(" \"'") if m else ""
    return subject if 0 < len(subject.split()) <= 6 else None


def definition_pattern(question: str) -> Optional[re.Pattern]:
    """For "Who is X?" / "What was X?": a pattern matching sentences that define X
    (an appositive "X, the ..." or a copula "X is a ..."); None for other questions."""
    subject = _definition_subject(question)
    if subject is None:
        return None
    name = r"\s+".join(re.escape(w) for w in subject.split())
    copula = rf"(?:is|was|are|were)\s+{_DETERMINER}\b"
    return re.compile(rf"\b{name}\b(?:,\s*{_DETERMINER}\b|\s+{copula}|,\s*(?:who|which)\s+{copula})", re.IGNORECASE)


def asks_about_a_name(question: str) -> bool:
    """"Who is Professor Challenger?", "What is Engineering News-Record?": the question asks
    what a name is (its subject is capitalised throughout, no possessive). "Who is the chair
    of the IPCC?", "What is Tesla's home country?" or "What is north of the garden?" ask for
    a name or a phrase instead."""
    subject = _definition_subject(question)
    return (subject is not None and not re.search(r"['’]s\b", subject)
            and all(w[0].isupper() or w[0].isdigit() for w in subject.split()))


@dataclass
class AskWeights:
    bigram: float = 1.0  # per shared term bigram
    answer_type: float = 1.0  # bonus when the sentence has what the question asks for
    # a sentence that is itself a question ("What do you know of Professor Challenger?") echoes
    # the user's question rather than answering it: its score is multiplied by this
    question_sentence: float = 0.5
    # "Who is X?" / "What was X?": bonus for a sentence that defines X ("X, the famous
    # zoologist", "X was a ...") rather than merely names it
    definition: float = 2.0


class QuestionScorer:
    """The lexical score of a sentence for one question, against the given statistics."""

    def __init__(self, question: str, weights: AskWeights = AskWeights()) -> None:
        self.question = question
        self.terms = terms(question)
        self.bigrams = set(zip(self.terms, self.terms[1:]))
        self.kind = answer_type(question)
        self.defines = definition_pattern(question)
        self.w = weights

    def score(self, p: Passage, stats: DocumentStats) -> float:
        s = stats.bm25(self.terms, p.terms)
        if self.bigrams:
            s += self.w.bigram * len(self.bigrams & set(zip(p.terms, p.terms[1:])))
        if self.kind is not None and s > 0:
            s += self.w.answer_type * has_answer_type(self.kind, p.text)
        if self.defines is not None and s > 0 and self.defines.search(p.text):
            s += self.w.definition
        if _IS_QUESTION.search(p.text):
            s *= self.w.question_sentence
        return s


class AskPool:
    """A fixed number of candidates for one question, whatever the document's length.

    Keeps the `size` best sentences by the score at the time they were seen (the statistics
    are those of the text read so far), plus a stratified sample (every k-th sentence, k
    doubling as the document grows) so that sentences scored with early statistics can still
    win when the final statistics rerank the pool.
    """

    def __init__(self, scorer: QuestionScorer, size: int = 256, sample: int = 64) -> None:
        self.scorer = scorer
        self.size, self.sample_size = size, sample
        self._heap: list[tuple[float, int, Passage]] = []
        self._sample: list[Passage] = []
        self._stride = 1

    def add(self, p: Passage, stats: DocumentStats) -> None:
        s = self.scorer.score(p, stats)
        if s > 0:
            keep_best(self._heap, (s, p.index, p), self.size)
        if p.index % self._stride == 0:
            self._sample.append(p)
            if len(self._sample) > self.sample_size:
                self._stride *= 2
                self._sample = [q for q in self._sample if q.index % self._stride == 0]

    def __len__(self) -> int:
        return len(self._heap) + len(self._sample)

    def candidates(self) -> list[Passage]:
        seen: dict[int, Passage] = {p.index: p for _, _, p in self._heap}
        for p in self._sample:
            seen.setdefault(p.index, p)
        return list(seen.values())

    def ranked(self, stats: DocumentStats) -> list[Passage]:
        """The pool rescored with the final statistics, best first (ties: earlier first)."""
        out = []
        for p in self.candidates():
            q = Passage(p.text, p.index, p.char_offset, p.page, p.line, p.terms, self.scorer.score(p, stats))
            if q.score > 0:
                out.append(q)
        out.sort(key=lambda q: (-q.score, q.index))
        return out


def rank_for_question(pool: AskPool, stats: DocumentStats, top_k: int) -> list[Passage]:
    """The final ranking: the pool rescored with the whole document's statistics."""
    return pool.ranked(stats)[:top_k]


# ----------------------------------------------------------------------------- absent answers

# A question whose weightiest words the document never uses is not answered by it: ask says
# "The document does not say." and names those words, rather than letting the writer, which
# answers anyway, invent an answer. A word counts as used in another inflection too (_inflected:
# "die" / "died", which the light stemmer leaves apart). Chosen on SQuAD dev articles 3, 9, ...,
# 45 (20 questions each, asked of their own article and of the next one in the sample, where the
# answer is absent; `bench_writer.py --sections absent-rule --article-offset 3`): below 0.5, 79%
# of absent answers are caught and 4% of present ones lost (0.4: 62% and 3%; 0.6: 91% and 9%).
# Without the inflections, as the rule was first shipped at 0.4: 71% and 5% below 0.4, 84% and
# 8% below 0.5 (the same questions; which count as absent depends on what the writer reads). The
# benchmark's articles (0, 6, ..., 42) were not used.
MIN_QUESTION_COVERAGE = 0.5


def question_coverage(question: str, stats: DocumentStats) -> tuple[float, list[str]]:
    """The share of the question's content terms, weighted by IDF, that the document uses
    (1.0 for a question without any), and the question's words it never uses. A term the
    document lacks has the largest IDF there is, so a missing name outweighs common words."""
    asked = [(w, term[0]) for w in words(question) if (term := terms(w))]  # a stop word has no term
    if not asked:
        return 1.0, []
    weight = {t: stats.idf(t) for _, t in asked}
    total = sum(weight.values())
    found = {t: _uses(t, stats) for t in weight}
    used = sum(w for t, w in weight.items() if found[t])
    unused = list(dict.fromkeys(w for w, t in asked if not found[t]))
    return (used / total if total > 0 else 1.0), unused


def _uses(term: str, stats: DocumentStats) -> bool:
    """The document uses the term, in this ending or another (_inflected)."""
    return bool(stats.df.get(term, 0)) or _inflected(term, stats)


def _inflected(term: str, stats: DocumentStats) -> bool:
    """The document uses the term with another ending that the light stemmer leaves apart
    ("die" / "died", "move" / "moved"): a term one or two letters longer or shorter that
    starts the same way, never shorter than three letters."""
    if len(term) < 3:
        return False
    return any(abs(len(u) - len(term)) <= 2 and min(len(u), len(term)) >= 3
               and (u.startswith(term) or term.startswith(u)) for u in stats.df)


def unmentioned_words(question: str, stats: DocumentStats,
                      min_coverage: float = MIN_QUESTION_COVERAGE) -> Optional[list[str]]:
    """The question's words the document never uses, where they leave it with less than
    min_coverage of the question (question_coverage); None where it covers enough."""
    coverage, unused = question_coverage(question, stats)
    return unused if coverage < min_coverage else None


# An open question ("What is the significance of cohesion in the story?") is answered by a
# summary focused on it, not a phrase the writer could invent, and its abstract words are often
# not the story's own ("cohesion", "societal structures", "transformation"): with the rule above
# applied to open questions' subjects, 34 of SQuALITY train+dev's 300 questions were turned away,
# all answered in their stories. An open question is turned away only for a name the document
# never uses ("Describe the dragon Smaug."): 20 then, 19 of them questions that do not read as
# open (the rule above) and "Who is Garrett and what happens to him?" of a story that never
# names him.
_QUESTION_NAME = re.compile(r"(?<=[^\s.?!:;])\s+([A-Z][\w'’-]*)")  # not a sentence's first word


def names_someone(question: str) -> bool:
    """The question has a capitalised word after its first ("Where is Mary?", "What dynasty
    came before the Yuan?"); "Where is the football?" does not."""
    return bool(_QUESTION_NAME.search(question))


def unknown_names(question: str, stats: DocumentStats) -> Optional[list[str]]:
    """The capitalised words after the question's first that the document never uses (in any
    ending, _uses); None where it uses them all."""
    unknown = [w for w in dict.fromkeys(_QUESTION_NAME.findall(question)) if (t := terms(w)) and not _uses(t[0], stats)]
    return unknown or None


# A name the document spells otherwise ("Corporal Bettiejean" of a story that says "Bettijean")
# is read as the document's spelling: a term one letter away (one more, one less, one
# changed, two swapped), starting with the same letter, at least MIN_RESPELL letters long
# (shorter names are too often another name: "Mary" / "Mark").
MIN_RESPELL = 5


def _one_edit_apart(a: str, b: str) -> bool:
    """a and b differ by one letter inserted, deleted or changed, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) < len(b):
        return a[i:] == b[i + 1:]
    swapped = i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2:] == b[i + 2:]
    return a[i + 1:] == b[i + 1:] or swapped


def respelled_names(question: str, stats: DocumentStats) -> dict[str, str]:
    """The question's capitalised names (after its first word) that the document never uses,
    each with the term the document uses one letter away (the most frequent such); names
    without one are left out."""
    out: dict[str, str] = {}
    for w in dict.fromkeys(re.sub(r"['’]s?$", "", w) for w in _QUESTION_NAME.findall(question)):  # "Vanse's"
        t = terms(w)
        if not t or len(w) < MIN_RESPELL or _uses(t[0], stats):
            continue
        near = [u for u in stats.df if u[:1] == t[0][:1] and _one_edit_apart(u, t[0])]
        if near:
            out[w] = max(near, key=lambda u: (stats.df[u], u))
    return out


def document_forms(names: dict[str, str], passages: Iterable[Passage]) -> dict[str, str]:
    """Each name of respelled_names as the document writes it: the first word of the passages
    whose term is the name's (its case and ending); the term capitalised where none is found.
    Reads only as far as the last name's first use."""
    forms: dict[str, str] = {}
    wanted = {term: name for name, term in names.items()}
    for p in passages:
        for w in re.findall(r"[\w'’-]+", p.text):
            if (t := terms(w)) and t[0] in wanted and wanted[t[0]] not in forms:
                forms[wanted[t[0]]] = w
        if len(forms) == len(names):
            break
    return {name: forms.get(name, term.capitalize()) for name, term in names.items()}


def respell(question: str, forms: dict[str, str]) -> str:
    """The question with each name replaced by its form (document_forms)."""
    for name, form in forms.items():
        question = re.sub(rf"(?<![\w'’-]){re.escape(name)}(?![\w-])", form, question)  # "Vanse's" too
    return question


# ----------------------------------------------------------------------------- second hop

# capitalised words anywhere in a sentence (a sentence's first word too: "Mary went to ...")
_CAPITALISED = re.compile(r"\b[A-Z][a-z]+\b")


def bridge_terms(question: str, first_hop: Sequence[Passage]) -> list[str]:
    """The names the best evidence adds to the question: what a second hop looks for.

    "Where is the football?" finds "Daniel picked up the football."; the answer is in a
    sentence that names Daniel and not the football ("Daniel went to the garden."). Names
    are the capitalised words of the first hop that are content terms (not stop words) and
    not in the question."""
    asked = set(terms(question))
    out: list[str] = []
    for p in first_hop:
        for word in _CAPITALISED.findall(p.text):
            for t in terms(word):
                if t not in asked and t not in out:
                    out.append(t)
    return out


class HopPool:
    """The sentences that name a bridge term, best first (the latest among equals: where a
    person is now is the last thing said of them); bounded like AskPool."""

    def __init__(self, bridge: Sequence[str], size: int = 64) -> None:
        self.bridge, self.size = list(bridge), size
        self._heap: list[tuple[float, int, Passage]] = []

    def add(self, p: Passage, stats: DocumentStats) -> None:
        if not self.bridge:
            return
        s = stats.bm25(self.bridge, p.terms)
        if s > 0:
            keep_best(self._heap, (s, p.index, p), self.size)

    def ranked(self, exclude: set[int]) -> list[Passage]:
        """Best first, the latest among equals; the scores are final (a second pass has the
        whole document's statistics from its first sentence on)."""
        out = [Passage(p.text, p.index, p.char_offset, p.page, p.line, p.terms, s)
               for s, _, p in self._heap if p.index not in exclude]
        out.sort(key=lambda q: (-q.score, -q.index))
        return out


def second_hop(question: str, first_hop: Sequence[Passage], passages: Iterable[Passage], stats: DocumentStats,
               k: int, follow: int = 3) -> list[Passage]:
    """Up to k sentences one step from the best `follow` evidence sentences (see bridge_terms),
    from a second pass over the document's sentences (the cache streams them back)."""
    bridge = bridge_terms(question, first_hop[:follow])
    if not bridge or k <= 0:
        return []
    pool = HopPool(bridge)
    for p in passages:
        pool.add(p, stats)
    return pool.ranked({p.index for p in first_hop})[:k]
