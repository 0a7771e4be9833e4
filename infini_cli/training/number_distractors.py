"""Numbers put into training haystacks, so the memory learns to read back the key and not them.

Real documents hold years, dates, counts and amounts. A memory that learned keys only from
number-free prose blends those digits into the key it reads back. Two kinds of distractor:

* `sprinkle_numbers`: bare numbers of 1-5 digits at random word boundaries;
* `sprinkle_number_phrases`: the shapes numbers take in prose (years, dates, ordinals, times,
  amounts), runs of them sharing a digit in neighbouring sentences, and statements that look
  like the key's line ("The year was 1849.") but name something else. One passage of that
  kind ("Admission Day, September 9 ... 1850 ... September 1849 ... September 9th") costs a
  model trained on bare numbers most of its keys at 128K tokens.
"""

from __future__ import annotations

import random

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
# things a sentence may say "is <number>" about; never the pass key itself
DECOY_NOUNS = ["year", "date", "room number", "house number", "price", "total", "sum", "distance",
               "number of the carriage", "page", "address", "count", "score", "height", "date of the letter",
               "number on the door", "figure", "reference"]


def sprinkle_numbers(sentences: list[str], rng: random.Random, rate: float) -> list[str]:
    """Put a random number into about `rate` of the sentences, at a random word boundary.

    Lengths of 1-5 digits, so some look like a key (a novel with about 90 numbers in 128K
    tokens: 2 keys of 11 right for a model trained without them).
    """
    out = []
    for sentence in sentences:
        if rng.random() < rate:
            words = sentence.split(" ")
            digits = rng.randint(1, 5)
            number = str(rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1))
            words.insert(rng.randint(0, len(words)), number)
            sentence = " ".join(words)
        out.append(sentence)
    return out


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _number(rng: random.Random, digit: str | None) -> int:
    """A number of 1-5 digits; with `digit`, one that contains it."""
    digits = rng.randint(1, 5)
    n = rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1)
    if digit is not None and digit not in str(n):
        s = list(str(n))
        # a leading zero would be dropped, and the digit with it
        s[rng.randrange(1 if digit == "0" and len(s) > 1 else 0, len(s))] = digit
        n = int("".join(s))
    return n


def number_phrase(rng: random.Random, digit: str | None = None) -> str:
    """One number the way prose writes it; with `digit`, every number in it contains that digit."""
    def pick(lo: int, hi: int) -> int:
        if digit is None:
            return rng.randint(lo, hi)
        hits = [n for n in range(lo, hi + 1) if digit in str(n)]
        return rng.choice(hits) if hits else rng.randint(lo, hi)

    day, month, year = pick(1, 28), rng.choice(MONTHS), pick(1700, 2030)
    forms = [
        lambda: str(year),
        lambda: f"in {year}",
        lambda: f"{month} {day}",
        lambda: f"{month} {_ordinal(day)}",
        lambda: f"the {_ordinal(day)} of {month}",
        lambda: f"{month} {day}, {year}",
        lambda: f"{month} {year}",
        lambda: f"at {pick(1, 12)}:{pick(0, 59):02d}",
        lambda: f"${_number(rng, digit):,}",
        lambda: f"{_number(rng, digit):,} dollars",
        lambda: f"{_number(rng, digit)} miles",
        lambda: f"No. {_number(rng, digit)}",
        lambda: str(_number(rng, digit)),
    ]
    return rng.choice(forms)()


def decoy_statement(rng: random.Random, digit: str | None = None) -> str:
    """A sentence shaped like the key's line that states some other number."""
    noun, value = rng.choice(DECOY_NOUNS), number_phrase(rng, digit)
    forms = [f"The {noun} is {value}.", f"The {noun} was {value}.", f"{value} is the {noun}.",
             f"Remember that the {noun} is {value}.", f"To-morrow is {value}."]
    return rng.choice(forms)


def sprinkle_number_phrases(sentences: list[str], rng: random.Random, rate: float) -> list[str]:
    """Put numbers as prose writes them into about `rate` of the sentences.

    Half of the insertions start a run: the next 1-4 sentences get numbers too, all sharing one
    digit (as a passage about September 9, 1849 and 1850 does). A fifth of them are decoy
    statements of their own instead of phrases inside a sentence.
    """
    out: list[str] = []
    run_left, run_digit = 0, None
    for sentence in sentences:
        if run_left == 0 and rng.random() < rate:
            run_left = 1 + (rng.randint(1, 4) if rng.random() < 0.5 else 0)
            run_digit = str(rng.randint(0, 9)) if run_left > 1 else None
        if run_left > 0:
            run_left -= 1
            if rng.random() < 0.2:
                out.append(sentence)
                sentence = decoy_statement(rng, run_digit)
            else:
                words = sentence.split(" ")
                words.insert(rng.randint(0, len(words)), number_phrase(rng, run_digit))
                sentence = " ".join(words)
        out.append(sentence)
    return out


def near_miss_statement(rng: random.Random) -> str:
    """A sentence that shares words with the key's line ("Remember", "key", "pass") but states
    another number: the key must be read from the whole line, not from a fragment of it.

    Found on a month: the tokenizer splits "September" as "Se pt ember" and "Remember" as
    " R em ember", and one sentence "first day of September 1849." pulled the key's third digit to
    a 9 in 5 of 11 prompts at 32K tokens ("December 1849" and "the year 1849" did nothing).
    """
    value = number_phrase(rng)
    month = rng.choice(["September", "November", "Remember"])
    forms = [f"Remember {value}.", f"Remember it. The {rng.choice(DECOY_NOUNS)} is {value}.",
             f"The key is {value}.", f"{value} is the key.", f"The pass is {value}.",
             f"{month} {value}.", f"Remember the {rng.choice(DECOY_NOUNS)}: {value}."]
    return rng.choice(forms)


def sprinkle_near_misses(sentences: list[str], rng: random.Random, rate: float) -> list[str]:
    """Add a near-miss statement after about `rate` of the sentences."""
    out: list[str] = []
    for sentence in sentences:
        out.append(sentence)
        if rng.random() < rate:
            out.append(near_miss_statement(rng))
    return out
