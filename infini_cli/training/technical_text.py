"""Digit-dense technical sentences for training haystacks: the key among a crowd of numbers.

Novels hold a few numbers in thousands of tokens; logs, tables, timetables and manuals hold
one every few tokens. A memory trained on prose (even with numbers sprinkled in) reads such a
haystack's digits back instead of the key: on a generated digit-dense text (30% digits) the
bundled reader found 2 of 66 keys. These sentences are what the memory must learn to pass
over. Their shapes are deliberately not those of the benchmark's haystack
(benchmarks/digit_haystack.py), so that the measurement stays a test of what was not seen.
"""

from __future__ import annotations

import random

STATIONS = ["Aldgate", "Bramley", "Carrow", "Dunmere", "Elswick", "Farleigh", "Grantby", "Hexley", "Ivybridge"]
TEAMS = ["Rovers", "United", "Athletic", "Wanderers", "Albion", "City", "Town", "Harriers"]
ELEMENTS = ["iron", "copper", "zinc", "nickel", "lead", "tin", "cobalt", "silver"]
SENSORS = ["T", "P", "RH", "V", "I", "F"]


def timetable(r: random.Random) -> str:
    a, b = r.sample(STATIONS, 2)
    return (f"Train {r.randrange(100, 9999)} leaves {a} at {r.randrange(5, 23):02d}.{r.randrange(0, 60, 5):02d} "
            f"from platform {r.randint(1, 14)} and reaches {b} at {r.randrange(5, 24):02d}.{r.randrange(60):02d}.")


def sensor(r: random.Random) -> str:
    readings = ", ".join(f"{r.choice(SENSORS)}{r.randrange(1, 99)}={r.uniform(-40, 400):.{r.randint(1, 3)}f}"
                         for _ in range(r.randint(2, 5)))
    return f"Probe {r.randrange(1, 512)} at t+{r.randrange(100000)} s: {readings}."


def score(r: random.Random) -> str:
    a, b = r.sample(TEAMS, 2)
    return (f"Round {r.randint(1, 38)}: {a} {r.randint(0, 7)}, {b} {r.randint(0, 7)}; attendance "
            f"{r.randrange(800, 90000):,}, receipts {r.randrange(1000, 999999)}.")


def assay(r: random.Random) -> str:
    return (f"Sample {r.randrange(1, 9999)}-{r.choice('ABCDEFGH')} held {r.uniform(0, 99):.2f} per cent "
            f"{r.choice(ELEMENTS)} and {r.uniform(0, 9):.3f} per cent {r.choice(ELEMENTS)} at a depth of "
            f"{r.randrange(2, 3000)} feet.")


def ledger(r: random.Random) -> str:
    width = r.randint(2, 6)
    return (f"On folio {r.randrange(1, 900)}, entry {r.randrange(1, 60)}: paid {r.randrange(1, 5000)} "
            f"pounds {r.randrange(20)} shillings, balance {r.randrange(-9999, 99999)}, voucher "
            f"{r.randrange(10 ** (width - 1), 10 ** width)}.")


def coordinates(r: random.Random) -> str:
    return (f"Station {r.randrange(1, 400)} lies at {r.randrange(0, 90)} degrees {r.randrange(60)} minutes north, "
            f"{r.randrange(0, 180)} degrees {r.randrange(60)} minutes west, {r.randrange(0, 4800)} metres up.")


def digits_only(r: random.Random) -> str:
    """Bare columns of numbers: the hardest case, nothing but digits between the words."""
    return " ".join(str(r.randrange(10 ** r.randint(1, 7))) for _ in range(r.randint(4, 12))) + "."


GENERATORS = (timetable, sensor, score, assay, ledger, coordinates, digits_only)


def technical_sentences(rng: random.Random, n: int) -> list[str]:
    """n sentences of one document's mix: a few of the shapes above, in runs."""
    kinds = rng.sample(GENERATORS, rng.randint(1, 4))
    out: list[str] = []
    while len(out) < n:
        make = rng.choice(kinds)
        out.extend(make(rng) for _ in range(rng.randint(1, 6)))
    return out[:n]


def mix_into(sentences: list[str], rng: random.Random, share: float) -> list[str]:
    """Replace about `share` of a haystack's sentences with technical ones, in runs (a report's
    table between paragraphs); share 1 gives a wholly technical haystack."""
    if share >= 1.0:
        return technical_sentences(rng, max(1, len(sentences)))
    out: list[str] = []
    i = 0
    # runs average 4.5 sentences: start one with the probability that makes `share` of them technical
    start = share / (4.5 - 3.5 * share)
    while i < len(sentences):
        if rng.random() < start:
            run = rng.randint(1, 8)
            out.extend(technical_sentences(rng, run))
            i += run
        else:
            out.append(sentences[i])
            i += 1
    return out or sentences
