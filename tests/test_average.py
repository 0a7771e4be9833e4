"""Averaging checkpoints: the weighted mean of every tensor, and clean refusals."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from infini_cli.training.average import average_checkpoints, normalized_weights
from infini_cli.checkpoint import load_checkpoint, read_header, save_checkpoint
from infini_cli.cli import app
from infini_cli.errors import InputError
from infini_cli.quantize import QuantScheme

from .conftest import assert_one_line_error, random_model, tiny_config


@pytest.fixture
def two_runs(tmp_path, tokenizer):
    """Two checkpoints of one architecture with different weights."""
    paths = []
    for seed in (0, 7):
        p = tmp_path / f"run{seed}.safetensors"
        save_checkpoint(p, random_model(tiny_config(tokenizer), seed=seed), tokenizer, training={"seed": seed})
        paths.append(p)
    return paths


def weights_of(path):
    return {k: v.float() for k, v in load_checkpoint(path).model.state_dict().items()}


def test_weighted_mean_of_every_tensor(tmp_path, two_runs):
    out = tmp_path / "soup.safetensors"
    data = average_checkpoints(two_runs, out, [3, 1])
    assert data["weights"] == [0.75, 0.25]
    a, b, m = weights_of(two_runs[0]), weights_of(two_runs[1]), weights_of(out)
    assert set(m) == set(a)
    for k in a:
        torch.testing.assert_close(m[k], 0.75 * a[k] + 0.25 * b[k])
    header = read_header(out)
    assert header.quant.name == "float32"
    assert [s["training"]["seed"] for s in header.training["averaged"]] == [0, 7]


def test_average_of_a_model_with_itself_is_that_model(tmp_path, two_runs):
    out = tmp_path / "same.safetensors"
    average_checkpoints([two_runs[0], two_runs[0]], out)
    a, m = weights_of(two_runs[0]), weights_of(out)
    for k in a:
        torch.testing.assert_close(m[k], a[k], rtol=0, atol=1e-7)


def test_quantized_sources_are_dequantized(tmp_path, tokenizer, two_runs):
    q = tmp_path / "q.safetensors"
    model = load_checkpoint(two_runs[1]).model
    save_checkpoint(q, model, tokenizer, QuantScheme(8))
    out = tmp_path / "mixed.safetensors"
    average_checkpoints([two_runs[0], q], out)
    a, bq, m = weights_of(two_runs[0]), weights_of(q), weights_of(out)
    for k in a:
        torch.testing.assert_close(m[k], 0.5 * a[k] + 0.5 * bq[k])


def test_different_architectures_are_refused(tmp_path, tokenizer, two_runs):
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, random_model(tiny_config(tokenizer, ffn_dim=96)), tokenizer)
    with pytest.raises(InputError, match="config differs"):
        average_checkpoints([two_runs[0], other], tmp_path / "x.safetensors")


@pytest.mark.parametrize("weights,count", [([1.0], 2), ([-1.0, 2.0], 2), ([0.0, 0.0], 2)])
def test_bad_weights(weights, count):
    with pytest.raises(InputError):
        normalized_weights(count, weights)


def test_cli_average(tmp_path, two_runs):
    out = tmp_path / "cli.safetensors"
    r = CliRunner().invoke(app, ["average", *map(str, two_runs), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["weights"] == [0.5, 0.5]
    info = json.loads(CliRunner().invoke(app, ["info", str(out), "--json"]).output)
    assert [s["source"] for s in info["training"]["averaged"]] == [p.name for p in two_runs]


def test_cli_average_errors(tmp_path, two_runs):
    run = CliRunner().invoke
    assert_one_line_error(run(app, ["average", str(two_runs[0]), "--out", str(tmp_path / "x.safetensors")]),
                          2, "at least two")
    assert_one_line_error(run(app, ["average", *map(str, two_runs), "--out", str(tmp_path / "x.safetensors"),
                                    "--weights", "a,b"]), 2, "--weights")
    assert_one_line_error(run(app, ["average", str(two_runs[0]), str(tmp_path / "missing.safetensors"),
                                    "--out", str(tmp_path / "x.safetensors")]), 2, "missing.safetensors")
