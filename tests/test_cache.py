"""Read once, ask many: the cached document memory, its keys, and `infini cache list|clear`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from infini_cli import cache as doc_cache
from infini_cli.checkpoint import load_checkpoint, save_checkpoint
from infini_cli.cli import app
from infini_cli.tasks.reading import read_document
from infini_cli.readers import open_document
from infini_cli.tasks.reading import INDEX, SENTENCES, read_or_load

from .conftest import assert_one_line_error, random_model, tiny_config
from .test_ask import ANSWER, document

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, list(map(str, args)), input=input)


def ask_json(*args):
    r = run("ask", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("INFINI_CACHE_DIR", str(tmp_path / "a"))
    assert doc_cache.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("INFINI_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert doc_cache.cache_dir() == tmp_path / "xdg" / "infini"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert doc_cache.cache_dir() == tmp_path / "home" / ".cache" / "infini"


def test_second_question_uses_the_cache(tmp_path, tiny_checkpoint, cache_dir):
    p = tmp_path / "notes.txt"
    p.write_text(document())
    first = ask_json(p, "When was the bridge built?", "--model", tiny_checkpoint)
    assert first["cached"] is False
    second = ask_json(p, "Who built the bridge?", "--model", tiny_checkpoint)
    assert second["cached"] is True and second["answer"] == ANSWER
    assert second["tokens"] == first["tokens"] and second["evidence"][0]["line"] == first["evidence"][0]["line"]
    again = ask_json(p, "When was the bridge built?", "--model", tiny_checkpoint)
    assert again["evidence"] == first["evidence"]  # the same ranking from disk as from the live read
    assert ask_json(p, "When was the bridge built?", "--model", tiny_checkpoint, "--no-cache")["cached"] is False
    # summarize starts from the memory ask saved
    r = run("summarize", p, "--model", tiny_checkpoint, "--json", "--sentences", 2)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cached"] is True
    assert len(doc_cache.list_entries(cache_dir)) == 1


def test_no_cache_writes_nothing(tmp_path, tiny_checkpoint, cache_dir):
    p = tmp_path / "notes.txt"
    p.write_text(document())
    ask_json(p, "Who built the bridge?", "--model", tiny_checkpoint, "--no-cache")
    assert doc_cache.list_entries(cache_dir) == []


def test_cached_state_equals_the_read_state(tmp_path, tiny_checkpoint, cache_dir):
    p = tmp_path / "notes.txt"
    p.write_text(document())
    loaded = load_checkpoint(tiny_checkpoint)
    live = read_document(loaded, p, quiet=True).state
    read_or_load(loaded, open_document(p), [], use_cache=True, quiet=True)
    again = read_or_load(loaded, open_document(p), [], use_cache=True, quiet=True)
    assert again.cached
    for a, b in zip(live.tensors().values(), again.state.tensors().values()):
        assert torch.equal(a, b)
    assert again.state.tokens_seen == live.tokens_seen and again.state.segments_written == live.segments_written


def test_changed_document_or_model_misses(tmp_path, tiny_checkpoint, tokenizer, cache_dir):
    p = tmp_path / "notes.txt"
    p.write_text(document())
    ask_json(p, "Who built the bridge?", "--model", tiny_checkpoint)
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, random_model(tiny_config(tokenizer), seed=7), tokenizer, training={"steps": 1})
    assert ask_json(p, "Who built the bridge?", "--model", other)["cached"] is False
    p.write_text(document(answer_at=3))
    data = ask_json(p, "Who built the bridge?", "--model", tiny_checkpoint)
    assert data["cached"] is False and data["evidence"][0]["line"] == 4
    assert len(doc_cache.list_entries(cache_dir)) == 3


def test_interrupted_read_leaves_no_entry(tmp_path, tiny_checkpoint, cache_dir, monkeypatch):
    p = tmp_path / "notes.txt"
    p.write_text(document())
    loaded = load_checkpoint(tiny_checkpoint)
    calls = []

    def boom(p_, idx):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        read_or_load(loaded, open_document(p), [boom], use_cache=True, quiet=True)
    assert doc_cache.list_entries(cache_dir) == []
    assert not any(x.name.startswith(".tmp-") for x in cache_dir.iterdir())


@pytest.mark.slow
def test_cache_list_and_clear(tmp_path, tiny_checkpoint, cache_dir):
    r = run("cache", "list")
    assert r.exit_code == 0 and "empty" in r.stdout
    p = tmp_path / "notes.txt"
    p.write_text(document())
    ask_json(p, "Who built the bridge?", "--model", tiny_checkpoint)
    r = run("cache", "list", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["cache_dir"] == str(cache_dir) and len(data["entries"]) == 1
    e = data["entries"][0]
    assert Path(e["document"]).name == "notes.txt" and e["bytes"] > 0 and e["tokens"] > 0 and e["created"]
    r = run("cache", "list")
    assert r.exit_code == 0 and "notes.txt" in r.stdout
    r = run("cache", "clear")
    assert r.exit_code == 0 and "removed 1" in r.stdout
    assert json.loads(run("cache", "list", "--json").stdout)["entries"] == []
    assert json.loads(run("cache", "clear", "--json").stdout)["removed"] == 0


def test_cache_help_lists_commands():
    r = run("cache", "--help")
    assert r.exit_code == 0 and "list" in r.output and "clear" in r.output
    assert "cache" in run("--help").output


def test_unwritable_cache_still_answers(tmp_path, tiny_checkpoint, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("INFINI_CACHE_DIR", str(blocker / "cache"))
    p = tmp_path / "notes.txt"
    p.write_text(document())
    data = ask_json(p, "Who built the bridge?", "--model", tiny_checkpoint)
    assert data["answer"] == ANSWER and data["cached"] is False
    assert any("cache" in w for w in data["warnings"])


def test_bad_checkpoint_is_a_clean_error(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text(document())
    assert_one_line_error(run("ask", p, "Why?", "--model", tmp_path / "none.safetensors"), 2, "none.safetensors")


def _damage_state_truncate(entry):
    p = entry.path / doc_cache.STATE_FILE
    p.write_bytes(p.read_bytes()[:100])


def _damage_state_nan(entry):
    from safetensors.torch import load_file, save_file

    p = entry.path / doc_cache.STATE_FILE
    t = load_file(str(p))
    t["0.M"] = torch.full_like(t["0.M"], float("nan"))
    save_file(t, str(p))


def _damage_state_shape(entry):
    from safetensors.torch import load_file, save_file

    p = entry.path / doc_cache.STATE_FILE
    t = load_file(str(p))
    t["0.z"] = torch.zeros(3)
    save_file(t, str(p))


def _damage_sentences(entry):
    (entry.path / doc_cache.records_file(SENTENCES)).write_bytes(b"\x1f\x8b garbage")


def _damage_index(entry):
    import gzip

    with gzip.open(entry.path / doc_cache.json_file(INDEX), "wt") as f:
        f.write("{not json")


@pytest.mark.parametrize("damage", [_damage_state_truncate, _damage_state_nan, _damage_state_shape,
                                    _damage_sentences, _damage_index])
def test_a_damaged_entry_is_dropped_and_the_document_read_again(tmp_path, tiny_checkpoint, cache_dir, damage):
    p = tmp_path / "notes.txt"
    p.write_text(document())
    first = ask_json(p, "Who built the bridge?", "--model", tiny_checkpoint)
    (entry,) = doc_cache.list_entries(cache_dir)
    damage(entry)
    again = ask_json(p, "Who built the bridge?", "--model", tiny_checkpoint)
    assert again["cached"] is False and again["answer"] == first["answer"]
    assert any("damaged" in w and "read the document again" in w for w in again["warnings"])
    # the entry was written afresh: the next question is served from it
    assert ask_json(p, "Who built the bridge?", "--model", tiny_checkpoint)["cached"] is True


def test_read_fills_the_cache_for_ask(tmp_path, tiny_checkpoint, cache_dir):
    """`infini read` then `infini ask`: the document is read once."""
    p = tmp_path / "notes.txt"
    p.write_text(document())
    r = run("read", p, "--model", tiny_checkpoint, "--json")
    assert r.exit_code == 0, r.output
    assert len(doc_cache.list_entries(cache_dir)) == 1
    assert ask_json(p, "Who built the bridge?", "--model", tiny_checkpoint)["cached"] is True
    # read always reads (it measures reading) and --no-cache saves nothing
    again = run("read", p, "--model", tiny_checkpoint, "--json", "--no-cache")
    assert again.exit_code == 0 and json.loads(again.stdout)["tokens"] == json.loads(r.stdout)["tokens"]
