"""The command line: help, version, info, quantize, clean one-line errors and exit codes."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from infini_cli import __version__
from infini_cli.cli import app

from .conftest import assert_one_line_error

runner = CliRunner()
COMMANDS = ["info", "quantize", "average", "convert", "train", "passkey-test", "summarize", "ask", "bench", "batch"]


def run(*args):
    return runner.invoke(app, list(map(str, args)))




def test_version():
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_command(flag):
    r = run(flag)
    assert r.exit_code == 0
    for c in COMMANDS:
        assert c in r.output


def _help_commands() -> list[list[str]]:
    return [[c] for c in COMMANDS if c != "cache"] + [["cache", "list"], ["cache", "clear"]]


@pytest.mark.parametrize("command", _help_commands(), ids=lambda c: " ".join(c))
def test_help_reads_evenly_at_80_columns(command, monkeypatch):
    """Each paragraph of a command's help wraps at the terminal's width, not at the source's
    line breaks (ragged lines), and examples keep their indent."""
    monkeypatch.setenv("COLUMNS", "80")
    r = CliRunner().invoke(app, [*command, "--help"], terminal_width=80)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert all(len(line) <= 80 for line in lines)
    prose = [line.rstrip() for line in lines if line.startswith(" ") and not line.startswith(("  ", " Usage"))]
    text = "\n".join(lines)
    assert "Example" in text, f"{command}: --help has no example"
    # a ragged paragraph shows as a short line followed by one that goes on in lower case
    for a, b in zip(prose, prose[1:]):
        if b and b[1:2].islower() and not a.endswith((".", ":", ")")):
            assert len(a) > 60, f"{command}: ragged help line {a!r} before {b!r}"
    for line in lines:
        if line.lstrip().startswith("infini ") and "Usage" not in line:
            assert line.startswith("   "), f"{command}: example lost its indent: {line!r}"


def test_reflow_help_joins_paragraph_lines_and_keeps_examples():
    from infini_cli.cli import reflow_help

    got = reflow_help("""Summary line.

    A paragraph
    broken in the source.

    Examples:

      infini ask a.txt "q"
    """)
    assert got == 'Summary line.\n\n\nA paragraph broken in the source.\n\nExamples:\n\n  infini ask a.txt "q"'


def test_info_json(tiny_checkpoint, tiny_model):
    r = run("info", tiny_checkpoint, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    for key in ("parameters", "quantization", "file_bytes", "segment_len", "memory_state_bytes",
                "kv_cache_bytes", "compression"):
        assert key in data
    assert data["parameters"] == sum(p.numel() for p in tiny_model.parameters())
    cfg = tiny_model.config
    assert data["memory_state_bytes"] == cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * (cfg.head_dim + 1) * 4
    n = str(1 << 20)
    assert data["kv_cache_bytes"][n] == 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * (1 << 20) * 2
    assert data["compression"][n] == pytest.approx(data["kv_cache_bytes"][n] / data["memory_state_bytes"], rel=1e-3)


def test_info_table(tiny_checkpoint):
    r = run("info", tiny_checkpoint)
    assert r.exit_code == 0 and "memory state" in r.output and "KV cache" in r.output


@pytest.mark.parametrize("bits,extra", [(8, []), (4, ["--group-size", "32"])])
def test_quantize_command(tmp_path, tiny_checkpoint, bits, extra):
    dst = tmp_path / f"q{bits}.safetensors"
    r = run("quantize", tiny_checkpoint, dst, "--bits", bits, *extra, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["bytes_after"] < data["bytes_before"]
    assert 0 < data["relative_error"] < (0.02 if bits == 8 else 0.15)
    assert json.loads(run("info", dst, "--json").output)["quantization"] == ("int8" if bits == 8 else "int4-g32")


def test_quantize_bad_bits(tmp_path, tiny_checkpoint):
    assert_one_line_error(run("quantize", tiny_checkpoint, tmp_path / "x.safetensors", "--bits", 3), 2, "--bits")


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(run("info", tmp_path / "missing.safetensors"), 2, "missing.safetensors", "no such file")


def test_pickle_checkpoint_refused(tmp_path):
    p = tmp_path / "model.bin"
    p.write_bytes(b"\x80\x04")
    assert_one_line_error(run("info", p), 2, "model.bin", "refused")


def test_truncated_checkpoint(tmp_path, tiny_checkpoint):
    p = tmp_path / "cut.safetensors"
    p.write_bytes(tiny_checkpoint.read_bytes()[:200])
    assert_one_line_error(run("info", p), 2, "cut.safetensors")


def test_non_safetensors(tmp_path):
    p = tmp_path / "notes.safetensors"
    p.write_text("just some notes, not a model")
    assert_one_line_error(run("info", p), 2, "notes.safetensors")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_gpu_is_a_clean_error(tiny_checkpoint):
    from infini_cli.device import DeviceError, resolve_device

    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceError):
        resolve_device("tpu")


def test_train_bad_config(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('{"stepz": 3}')
    assert_one_line_error(run("train", "--config", p), 2, "stepz")


def test_document_text_is_never_markup_or_terminal_control(tmp_path):
    """A document holding rich markup and escape sequences: printed verbatim, controls removed."""
    from typer.testing import CliRunner as _Runner

    from infini_cli.cli import app as _app

    doc = tmp_path / "evil.txt"
    evil = ("The treasure is buried [/bold] under the [link=http://x.example]old oak[/link] tree.\x1b]0;pwned\x07 "
            "The treasure was moved.\x1b[2J Nobody \x1b]52;c;aGVsbG8=\x07knows the treasure.\n")
    doc.write_text(evil * 20)
    r = _Runner().invoke(_app, ["ask", str(doc), "Where is the treasure buried?", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "[/bold]" in r.output and "[link=http://x.example]" in r.output
    assert "\x1b" not in r.output and "\x07" not in r.output
    s = _Runner().invoke(_app, ["summarize", str(doc), "--words", "30", "--threads", "1"])
    assert s.exit_code == 0 and "\x1b" not in s.output and "[/bold]" in s.output


def test_strip_controls_keeps_text_and_layout():
    from infini_cli.terminal import strip_controls

    assert strip_controls("a\x1b[31mred\x1b[0m b\tc\nd\x07e\x1b]0;t\x1b\\f\u202eg") == "ared b\tc\ndefg"


def test_small_readers_default_to_one_thread_and_writers_to_every_core(monkeypatch):
    from infini_cli.device import SMALL_MODEL_PARAMETERS, default_threads

    import os

    import torch

    assert default_threads(1_836_176) == 1
    from infini_cli import device

    monkeypatch.setattr(device, "busy_cores", lambda: 0)  # an idle machine
    torch.set_num_threads(1)  # a reader loaded first must not cap the writer's count
    try:
        assert default_threads(SMALL_MODEL_PARAMETERS * 10) == max(1, min(os.cpu_count() or 1,
                                                                          device._TORCH_DEFAULT_THREADS))
    finally:
        torch.set_num_threads(device._TORCH_DEFAULT_THREADS)


def test_a_writer_leaves_the_cores_other_processes_keep_busy(monkeypatch):
    """Under load the writer's default gives way (every core minus the busy ones, at least
    one); a small reader stays at one thread whatever the load."""
    from infini_cli import device

    monkeypatch.setattr(device, "_TORCH_DEFAULT_THREADS", 8)
    monkeypatch.setattr(device.os, "cpu_count", lambda: 8)
    big = device.SMALL_MODEL_PARAMETERS * 10
    monkeypatch.setattr(device, "_running_now", lambda: 40)  # everything counted as running now
    for load, want in [((0.2, 0, 0), 8), ((1.4, 0, 0), 7), ((2.6, 0, 0), 5), ((30.0, 0, 0), 1)]:
        monkeypatch.setattr(device.os, "getloadavg", lambda load=load: load)
        assert device.default_threads(big) == want
        assert device.default_threads(1_836_176) == 1
    # load left behind by a command that has ended: nothing else runs now, so every core
    monkeypatch.setattr(device, "_running_now", lambda: 1)
    assert device.default_threads(big) == 8
    monkeypatch.setattr(device, "_running_now", lambda: None)  # unknown: the load average alone
    assert device.default_threads(big) == 1

    def unknown():
        raise OSError("no load average here")
    monkeypatch.setattr(device.os, "getloadavg", unknown)
    assert device.default_threads(big) == 8
