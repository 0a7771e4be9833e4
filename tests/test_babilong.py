"""BABILong: bAbI parsing and splits, BABILong's scoring rule, samples built to exact lengths
with the facts in order, the command's table / JSON / resume, and the training batches."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from infini_cli.cli import app
from infini_cli.errors import InputError
from infini_cli.tasks.babilong import SampleBuilder, is_correct, load_tasks, parse_babi, parse_lengths
from infini_cli.tasks.passkey_prompt import Haystack

from .conftest import assert_one_line_error

runner = CliRunner()

QA1 = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Mary travelled to the office.
6 Where is Mary? \toffice\t5
1 Sandra journeyed to the garden.
2 Where is Sandra? \tgarden\t1
"""
HAYSTACK = " ".join(f"The river ran past mill number {i} and under the bridge." for i in range(300))


@pytest.fixture
def babi_dir(tmp_path):
    d = tmp_path / "babi"
    d.mkdir()
    stories = QA1 * 5  # ten stories
    (d / "qa1_single-supporting-fact_train.txt").write_text(stories)
    return d


def test_parse_samples_see_only_earlier_facts(babi_dir):
    (task,) = load_tasks(babi_dir, ["qa1"])
    first, second, third = task.samples[:3]
    assert first.facts == ("Mary moved to the bathroom.", "John went to the hallway.")
    assert second.facts[-1] == "Mary travelled to the office." and len(second.facts) == 4
    assert third.facts == ("Sandra journeyed to the garden.",) and third.story == 1
    assert task.answer_words == {"bathroom", "office", "garden"}
    train, valid = task.split("train"), task.split("valid")
    assert train and valid and not {s.story for s in train} & {s.story for s in valid}
    assert len(train) + len(valid) == len(task.samples)


def test_malformed_files_are_one_line(tmp_path):
    bad = tmp_path / "qa1_x.txt"
    bad.write_text("Mary moved.\n")
    with pytest.raises(InputError, match="qa1_x.txt:1"):
        parse_babi(bad, "qa1")
    bad.write_text("1 Mary moved.\n5 John went.\n")
    with pytest.raises(InputError, match="line number 5"):
        parse_babi(bad, "qa1")
    with pytest.raises(InputError, match="no file for qa2"):
        load_tasks(tmp_path, ["qa2"])


@pytest.mark.parametrize("output,ok", [
    ("bathroom", True), ("Bathroom.", True), ("Mary is in the bathroom. Then office.", True),
    ("the office", False), ("bathroom or office", False), ("", False), ("bath", False),
])
def test_babilong_scoring_rule(output, ok):
    assert is_correct(output, "bathroom", frozenset({"bathroom", "office", "garden"}), "Where is Mary?") is ok


def test_words_of_the_question_may_be_echoed():
    words = frozenset({"kitchen", "garden"})
    assert is_correct("The garden is north of the kitchen", "garden", words, "What is north of the kitchen?")


def test_samples_have_exact_length_and_facts_in_order(babi_dir, tokenizer):
    (task,) = load_tasks(babi_dir, ["qa1"])
    b = SampleBuilder(tokenizer, Haystack.from_text(tokenizer, HAYSTACK, "river"))
    s = task.samples[1]
    for length in (200, 1000, 3000):
        for seed in range(5):
            plan = b.plan(s, length, random.Random(seed))
            ids = [t for c in b.iter_exact(s, plan, length) for t in c]
            assert len(ids) == length
            text = tokenizer.decode(ids)
            where = [text.index(f) for f in s.facts]
            assert where == sorted(where)
    alone = [t for c in b.iter_exact(s, b.plan(s, 0, random.Random(0)), 0) for t in c]
    assert tokenizer.decode(alone).strip() == " ".join(s.facts)


def test_lengths_parse_zero_and_binary_units():
    assert parse_lengths("0,4k,1m") == [0, 4096, 1 << 20]
    with pytest.raises(InputError):
        parse_lengths("0,abc")


def test_command_table_json_and_resume(babi_dir, tmp_path, tiny_checkpoint):
    hay = tmp_path / "hay.txt"
    hay.write_text(HAYSTACK)
    out = tmp_path / "run"
    args = ["babilong", "--model", str(tiny_checkpoint), "--data", str(babi_dir), "--haystack", str(hay),
            "--tasks", "qa1", "--lengths", "0,200", "--samples", "3", "--out", str(out)]
    r = runner.invoke(app, args + ["--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [(c["task"], c["length"], c["total"]) for c in data["cells"]] == [("qa1", 0, 3), ("qa1", 200, 3)]
    assert 0.0 <= data["accuracy"] <= 1.0
    rows = (out / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 6 and json.loads(rows[0])["target"] in {"bathroom", "office", "garden"}
    # a rerun resumes: nothing new is asked, the same figures come back
    again = json.loads(runner.invoke(app, args + ["--json"]).output)
    assert again["cells"] == data["cells"] and len((out / "samples.jsonl").read_text().splitlines()) == 6
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "qa1" in table.output and "avg" in table.output


def test_the_memory_is_what_is_measured(babi_dir, tmp_path, tiny_checkpoint):
    """--method local forces the gates local: a different model output, on the same samples."""
    hay = tmp_path / "hay.txt"
    hay.write_text(HAYSTACK)
    base = ["babilong", "--model", str(tiny_checkpoint), "--data", str(babi_dir), "--haystack", str(hay),
            "--tasks", "qa1", "--lengths", "300", "--samples", "4", "--json"]
    for method in ("memory", "local", "lexical"):
        r = runner.invoke(app, base + ["--method", method])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["method"] == method


def test_bad_options_are_one_line(babi_dir, tiny_checkpoint):
    base = ["babilong", "--model", str(tiny_checkpoint), "--data", str(babi_dir)]
    assert_one_line_error(runner.invoke(app, base + ["--tasks", "one"]), 2, "--tasks")
    assert_one_line_error(runner.invoke(app, base + ["--tasks", "qa9"]), 2, "qa9")
    assert_one_line_error(runner.invoke(app, base + ["--samples", "0"]), 2, "--samples")
    assert_one_line_error(runner.invoke(app, base + ["--method", "magic"]), 2, "--method")


def test_training_batches_put_the_answer_after_the_question(babi_dir, tokenizer, tmp_path):
    from infini_cli.training.babilong_data import BabilongSampler

    book = tmp_path / "book.txt"
    book.write_text(HAYSTACK)
    S = 64
    sampler = BabilongSampler(tokenizer, S, str(babi_dir), "qa1", [str(book)], max_segments=6, start_segments=2,
                              ramp=10)
    assert sampler.segments_at(0) == 2 and sampler.segments_at(10) == 6
    toks, pos, tgt, tasks = sampler.batch(random.Random(0), 10, 4)
    assert toks.shape[1] % S == 0 and tasks == ["qa1"] * 4
    # every target is the token that follows its position, and it is a word of an answer
    assert (toks[pos[:, 0], pos[:, 1] + 1] == tgt).all()
    # answers sit in the last segment: the question starts it, so the answer comes from memory
    assert (pos[:, 1] >= toks.shape[1] - S).all()
    for b in range(4):
        answer = tokenizer.decode([int(t) for t, (bb, _) in zip(tgt, pos.tolist()) if bb == b]).strip()
        assert answer in {"bathroom.", "office.", "garden."}
