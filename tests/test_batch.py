"""infini batch: inputs, resuming, the worker's rows, the shared cache under concurrent writers,
the message without Ray, and a real local Ray run with two workers on a tiny model."""

from __future__ import annotations

import builtins
import json
import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infini_cli import cache as doc_cache
from infini_cli.batch import Input, RowWriter, expand_inputs, iter_rows, make_job, row_key, still_to_do, worker_share
from infini_cli.batch_worker import BatchWorker, Job, WorkerSettings
from infini_cli.cli import app
from infini_cli.errors import InputError
from infini_cli.tasks.reading import SENTENCES
from tests.pdf_factory import make_pdf

from .conftest import assert_one_line_error
from .test_ask import ANSWER, document

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(map(str, args)))


def rows_of(out: Path) -> list[dict]:
    return list(iter_rows(out))


def touch(path: Path, text: str = "Some text.\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- inputs

def test_a_folder_is_walked_sorted_for_documents(tmp_path):
    for name in ("b.txt", "a.pdf", "sub/c.md", "sub/deeper/d.TXT", "notes.json", ".hidden/e.txt", ".f.txt"):
        touch(tmp_path / "docs" / name)
    got = [Path(i.path).relative_to(tmp_path / "docs").as_posix() for i in expand_inputs([str(tmp_path / "docs")])]
    assert got == ["a.pdf", "b.txt", "sub/c.md", "sub/deeper/d.TXT"]


def test_a_list_file_skips_comments_and_reads_paths_from_its_folder(tmp_path, monkeypatch):
    a = touch(tmp_path / "lists" / "a.txt")
    b = touch(tmp_path / "elsewhere" / "b.txt")
    (tmp_path / "lists" / "todo.txt").write_text(f"# to read\n\na.txt\n  ../elsewhere/b.txt  \n{b}\n# the end\n")
    monkeypatch.chdir(tmp_path / "elsewhere")  # relative to the list, not to the working folder
    got = expand_inputs([f"@{tmp_path / 'lists' / 'todo.txt'}"])
    assert got == [Input(str(a)), Input(str(b))]  # b named twice, kept once


def test_files_are_taken_as_named_and_duplicates_dropped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = touch(tmp_path / "data.json", "{}")  # named explicitly: taken whatever its suffix
    got = expand_inputs(["data.json", str(data), str(tmp_path)])
    assert [i.path for i in got] == [str(data)]  # the folder walk finds no .json, the rest is one file


def test_a_missing_input_is_an_error_row_not_a_crash(tmp_path):
    got = expand_inputs([str(tmp_path / "gone.txt"), f"@{tmp_path / 'no-list.txt'}"])
    assert [i.path for i in got] == [str(tmp_path / "gone.txt"), str(tmp_path / "no-list.txt")]
    assert "no such file" in got[0].error and "no such file" in got[1].error


# ----------------------------------------------------------------------------- the job and resuming

@pytest.mark.parametrize("args,message", [
    ((None, False, False, None), "exactly one"),
    (("Why?", True, False, None), "--ask, --summarize"),
    ((None, False, True, 50), "--words goes with --summarize"),
    (("  ", False, False, None), "the question is empty"),
    ((None, True, False, 0), "--words 0"),
])
def test_bad_task_options_are_input_errors(args, message):
    with pytest.raises(InputError, match=message):
        make_job(*args, top_k=3, use_cache=True)


def test_rows_are_keyed_by_path_task_and_request(tmp_path):
    ask = make_job("Who  built it?", False, False, None, 3, True)
    assert ask.question == "Who built it?"  # the same spelling ask() reports, so rows match
    rows = [{"path": "/d/a.txt", **ask.describe(), "answer": "x"},
            {"path": "/d/b.txt", **ask.describe(), "error": "bad PDF"},
            {"path": "/d/c.txt", **make_job("Another?", False, False, None, 3, True).describe(), "answer": "y"},
            {"path": "/d/d.txt", **make_job(None, True, False, 100, 3, True).describe(), "summary": "z"}]
    inputs = [Input(f"/d/{n}.txt") for n in "abcd"]
    # a: done; b: failed, so retried; c and d: done for another question / task only
    assert [i.path for i in still_to_do(inputs, ask, rows)] == ["/d/b.txt", "/d/c.txt", "/d/d.txt"]
    summary = make_job(None, True, False, 100, 3, True)
    assert [i.path for i in still_to_do(inputs, summary, rows)] == ["/d/a.txt", "/d/b.txt", "/d/c.txt"]
    longer = make_job(None, True, False, 300, 3, True)
    assert len(still_to_do(inputs, longer, rows)) == 4  # another length is another summary
    assert row_key(rows[0]) == ("/d/a.txt", "ask", "Who built it?", None, "default")
    # the same question asked with another --model is new work
    other_model = make_job("Who  built it?", False, False, None, 3, True, model="infini-small")
    assert len(still_to_do(inputs, other_model, rows)) == 4


def test_the_output_survives_a_line_cut_short(tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_text(json.dumps({"path": "/a", "task": "read", "tokens": 3}) + "\n" + '{"path": "/b", "ta')
    assert rows_of(out) == [{"path": "/a", "task": "read", "tokens": 3}]
    w = RowWriter(out)
    w.write({"path": "/b", "task": "read", "tokens": 5})
    w.close()
    assert [r["path"] for r in rows_of(out)] == ["/a", "/b"]  # the cut line stays ignored, the new one is whole


@pytest.mark.parametrize("nodes,workers,share", [
    ([2], 1, (2.0, 2)), ([2], 2, (1.0, 1)), ([16], 3, (5.0, 5)),
    ([3, 3], 3, (1.0, 1)),   # 2 CPUs each would not place the third worker
    ([4, 1], 2, (2.0, 2)), ([1, 1], 2, (1.0, 1)),
    ([2], 4, (0.5, 1)), ([2], 5, (0.3333, 1)),  # more workers than cores: a fraction each
])
def test_worker_share_never_oversubscribes_and_always_places(nodes, workers, share):
    assert worker_share(nodes, workers) == share
    cpus = share[0]
    assert sum(int(n / cpus + 1e-9) for n in nodes) >= workers


# ----------------------------------------------------------------------------- the worker, in-process

def test_the_worker_returns_rows_and_error_rows(tmp_path, tiny_checkpoint):
    good = touch(tmp_path / "notes.txt", document())
    bad = touch(tmp_path / "broken.pdf", "not a PDF at all")
    job = make_job("When was the bridge built?", False, False, None, 2, True)
    worker = BatchWorker(WorkerSettings(job, str(tiny_checkpoint), threads=1))
    assert worker.ready()["error"] is None and worker.ready()["threads"] == 1
    row = worker.run(str(good))
    assert row["path"] == str(good) and row["task"] == "ask" and row["answer"] == ANSWER
    assert len(row["evidence"]) == 2 and "error" not in row
    failed = worker.run(str(bad))
    assert failed == {"path": str(bad), "task": "ask", "question": job.question, "requested_model": "default",
                      "error": failed["error"]}
    assert "not a PDF" in failed["error"]


def test_a_worker_that_cannot_load_reports_it_for_every_document(tmp_path):
    worker = BatchWorker(WorkerSettings(Job("read"), str(tmp_path / "missing.safetensors")))
    assert "missing.safetensors" in worker.ready()["error"]
    assert "missing.safetensors" in worker.run(str(tmp_path / "a.txt"))["error"]


# ----------------------------------------------------------------------------- the cache under concurrent workers

def _read_in_threads(loaded, path: Path, n: int) -> list:
    from infini_cli.readers import open_document
    from infini_cli.tasks.reading import read_or_load

    results, errors = [], []
    start = threading.Barrier(n)

    def one() -> None:
        try:
            start.wait()
            results.append(read_or_load(loaded, open_document(path), [], quiet=True, lookup=False))
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_writers_of_one_entry_at_once_leave_one_whole_entry(tmp_path, tiny_checkpoint, cache_dir):
    from infini_cli.loading import load_model

    loaded = load_model(tiny_checkpoint, "cpu", 1)
    doc = touch(tmp_path / "notes.txt", document(200))
    results = _read_in_threads(loaded, doc, 4)
    assert all(not r.warnings for r in results)  # a lost race is silent: nobody saw a damaged entry
    (entry,) = doc_cache.list_entries(cache_dir)
    assert [p.name for p in cache_dir.iterdir()] == [entry.key]  # no temporary folders left behind
    entry.load_state(loaded.config, loaded.device, loaded.dtype)
    assert sum(1 for _ in entry.records(SENTENCES)) == results[0].index.n_sentences


def test_a_stale_entry_is_replaced(tmp_path, tiny_checkpoint, cache_dir):
    from infini_cli.loading import load_model

    loaded = load_model(tiny_checkpoint, "cpu", 1)
    doc = touch(tmp_path / "notes.txt", document())
    _read_in_threads(loaded, doc, 1)
    (first,) = doc_cache.list_entries(cache_dir)
    meta = json.loads((first.path / "meta.json").read_text())
    (first.path / "meta.json").write_text(json.dumps({**meta, "version": "0"}))  # an older cache format
    assert doc_cache.list_entries(cache_dir) == []
    _read_in_threads(loaded, doc, 1)
    (entry,) = doc_cache.list_entries(cache_dir)
    assert entry.meta["version"] == doc_cache.CACHE_VERSION
    assert [p.name for p in cache_dir.iterdir()] == [entry.key]


# ----------------------------------------------------------------------------- the command

def test_without_ray_one_line_says_how_to_install_it(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    doc = touch(tmp_path / "a.txt")
    r = run("batch", doc, "--read", "--out", tmp_path / "rows.jsonl")
    assert_one_line_error(r, 2, 'pip install "infini[ray]"')
    assert not (tmp_path / "rows.jsonl").exists()  # nothing written, nothing started


@pytest.mark.parametrize("args,words", [
    (["--read", "--summarize"], "exactly one"),
    ([], "exactly one"),
    (["--ask", "Why?", "--words", "20"], "--words goes with --summarize"),
    (["--read", "--workers", "0"], "--workers 0"),
    (["--read", "--model", "no-such-model"], "no-such-model"),
])
def test_bad_usage_is_one_line_and_exit_2(tmp_path, args, words):
    pytest.importorskip("ray", reason="the checks after Ray's import need Ray")
    doc = touch(tmp_path / "a.txt")
    r = run("batch", doc, "--out", tmp_path / "rows.jsonl", *args)
    assert_one_line_error(r, 2, words)


def test_a_folder_without_documents_is_exit_2(tmp_path):
    touch(tmp_path / "empty" / "data.json", "{}")
    r = run("batch", tmp_path / "empty", "--read", "--out", tmp_path / "rows.jsonl")
    assert_one_line_error(r, 2, "the inputs name no document")


def test_an_address_where_no_cluster_runs_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("ray", reason="infini batch needs Ray")
    with socket.socket() as s:  # a port nobody listens on once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rows.jsonl"
    r = run("batch", touch(tmp_path / "a.txt"), "--read", "--out", out, "--address", f"127.0.0.1:{port}")
    assert_one_line_error(r, 2, f"--address 127.0.0.1:{port}", "ray start --head")
    assert not out.exists()


def test_everything_already_done_starts_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    """A rerun with nothing left writes nothing and does not start Ray at all."""
    ray = pytest.importorskip("ray", reason="infini batch needs Ray")
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started with nothing to do"))
    doc = touch(tmp_path / "a.txt")
    out = tmp_path / "rows.jsonl"
    asked = str(Path(tiny_checkpoint).resolve())
    out.write_text(json.dumps({"path": str(doc), "task": "read", "requested_model": asked, "tokens": 4}) + "\n")
    r = run("batch", doc, "--read", "--out", out, "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    assert "1 already done" in r.output and len(rows_of(out)) == 1


def test_a_local_ray_run_with_two_workers_then_resumes(tmp_path, tiny_checkpoint, cache_dir):
    """The real thing: a local Ray, two workers, four documents (two with the same text, so both
    workers may write one cache entry at once) and a broken PDF; then a rerun after the PDF is mended."""
    pytest.importorskip("ray", reason="infini batch needs Ray: pip install -e '.[ray]'")
    docs = tmp_path / "docs"
    for i in range(3):
        touch(docs / f"doc{i}.txt", document(30 + 10 * i, answer_at=5 * i))
    touch(docs / "same-as-doc0.md", document(30, answer_at=0))
    broken = touch(docs / "broken.pdf", "this is not a PDF")
    out = tmp_path / "out" / "answers.jsonl"
    args = ["batch", docs, "--ask", "When was the bridge built?", "--out", out, "--workers", 2,
            "--model", tiny_checkpoint, "--top-k", 1]
    r = run(*args)
    assert r.exit_code == 1, r.output
    assert "4 done, 1 failed" in r.output and "2 workers" in r.output
    rows = {Path(row["path"]).name: row for row in rows_of(out)}
    assert sorted(rows) == ["broken.pdf", "doc0.txt", "doc1.txt", "doc2.txt", "same-as-doc0.md"]
    assert "not a PDF" in rows["broken.pdf"]["error"]
    for name in ("doc0.txt", "doc1.txt", "doc2.txt", "same-as-doc0.md"):
        assert rows[name]["answer"] == ANSWER and rows[name]["task"] == "ask" and len(rows[name]["evidence"]) == 1
    assert len(doc_cache.list_entries(cache_dir)) == 3  # the same text is one entry, whoever wrote it
    assert [p.name for p in cache_dir.iterdir() if p.name.startswith(".")] == []

    make_pdf(broken, pages=2)  # mended: the rerun retries it and redoes nothing else
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert "1 done, 0 failed, 4 already done" in r.output
    again = rows_of(out)
    assert len(again) == 6 and Path(again[-1]["path"]).name == "broken.pdf" and "error" not in again[-1]
