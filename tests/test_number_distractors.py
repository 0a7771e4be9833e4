"""Distractor numbers for training haystacks: where they go, what shape they take, seeded."""

from __future__ import annotations

import random
import re

from infini_cli.training.number_distractors import (DECOY_NOUNS, decoy_statement, near_miss_statement, number_phrase,
                                                 sprinkle_near_misses, sprinkle_number_phrases, sprinkle_numbers)

SENTENCES = [f"Word{i} went home and slept well." for i in range(400)]


def test_bare_numbers_go_in_at_word_boundaries():
    out = sprinkle_numbers(SENTENCES, random.Random(0), rate=0.1)
    changed = [o for s, o in zip(SENTENCES, out) if s != o]
    assert 20 <= len(changed) <= 60  # about 10% of 400
    for s, o in zip(SENTENCES, out):
        if s != o:  # one number inserted at a word boundary, the words kept in order
            words = o.split(" ")
            numbers = [w for w in words if w.isdigit()]
            assert len(numbers) == 1 and 1 <= len(numbers[0]) <= 5
            assert [w for w in words if not w.isdigit()] == s.split(" ")
    assert sprinkle_numbers(SENTENCES, random.Random(0), 0.1) == out  # seeded


def test_a_phrase_with_a_digit_holds_that_digit_in_every_number():
    rng = random.Random(1)
    for _ in range(2000):
        digit = str(rng.randint(0, 9))
        phrase = number_phrase(rng, digit)
        numbers = re.findall(r"\d[\d,:]*", phrase)
        assert numbers, phrase
        assert all(digit in n for n in numbers), (digit, phrase)


def test_phrases_take_the_shapes_of_prose():
    rng = random.Random(2)
    phrases = [number_phrase(rng) for _ in range(500)]
    assert any(re.fullmatch(r"[A-Z][a-z]+ \d{1,2}(st|nd|rd|th)", p) for p in phrases)  # September 9th
    assert any(re.fullmatch(r"(in )?1[7-9]\d\d|20[0-3]\d", p) for p in phrases)       # a year
    assert any(p.startswith("$") for p in phrases) and any(":" in p for p in phrases)
    assert any(re.fullmatch(r"\d+", p) for p in phrases)                             # a bare number


def test_decoys_look_like_the_key_line_but_never_name_the_pass_key():
    rng = random.Random(3)
    decoys = [decoy_statement(rng) for _ in range(500)]
    assert all(re.search(r"\d", d) and d.endswith(".") for d in decoys)
    assert not any("pass key" in d.lower() for d in decoys)
    assert not any("pass key" in n or n == "key" for n in DECOY_NOUNS)
    assert sum(" is " in d for d in decoys) > 250


def test_phrases_come_in_runs_that_share_a_digit_and_keep_the_text():
    out = sprinkle_number_phrases(SENTENCES, random.Random(4), rate=0.05)
    kept = [s for s in out if re.search(r"Word\d+", s)]
    words = [" ".join(w for w in s.split(" ") if re.fullmatch(r"Word\d+", w) or w in ("went", "home", "and", "slept", "well."))
             for s in kept]
    assert len(kept) == len(SENTENCES)   # decoys are added between sentences, no sentence lost
    assert words == SENTENCES            # and each keeps its own words in order
    marked = [bool(re.search(r"\d", re.sub(r"Word\d+", "", s))) for s in out]
    runs, n = [], 0
    for m in marked + [False]:
        if m:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    assert max(runs) >= 3 and 1 in runs  # runs of several sentences, and single numbers
    assert 10 <= sum(marked) <= 120
    assert sprinkle_number_phrases(SENTENCES, random.Random(4), 0.05) == out  # seeded


def test_near_misses_borrow_the_key_lines_words_for_another_number():
    rng = random.Random(5)
    misses = [near_miss_statement(rng) for _ in range(500)]
    assert all(re.search(r"\d", m) for m in misses)
    assert not any("pass key" in m.lower() for m in misses)
    assert sum("Remember" in m for m in misses) > 150 and sum("key" in m for m in misses) > 50
    assert any(m.startswith("September ") for m in misses)


def test_near_misses_go_between_sentences():
    out = sprinkle_near_misses(SENTENCES, random.Random(6), rate=0.05)
    assert [s for s in out if s.startswith("Word")] == SENTENCES
    assert 5 <= len(out) - len(SENTENCES) <= 40
    assert sprinkle_near_misses(SENTENCES, random.Random(6), 0.05) == out
