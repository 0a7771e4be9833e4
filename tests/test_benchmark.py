"""`infini bench`: the quick path on the tiny preset, the baselines' fairness, the int8 kernel."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from infini_cli.cli import app
from infini_cli.config import preset
from infini_cli.memory import StreamState
from infini_cli.quantize import Int8Linear, int8_kernel_available, use_int8_linears
from infini_cli.stream import feed

from .conftest import random_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import engine_bench as bm  # noqa: E402

REQUIRED = ("cpu_matmul_gflops", "flops_per_token", "ingest_tokens_per_second", "mfu",
            "speedup_vs_transformers", "peak_rss_mb")


def test_bench_tiny_writes_json_and_markdown(tmp_path):
    out = tmp_path / "engine.json"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["bench", "--tiny", "--json", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in REQUIRED:
        assert data[key] is not None, key
    assert set(data["peak_rss_mb"]) == {"256", "512"}
    assert 0 < data["mfu"] < 2 and data["flops_per_token"] > 0
    assert set(data["compare"]) == {"infini", "full", "transformers"}
    assert all(r["status"] == "ok" for e in data["compare"].values() for r in e.values())
    assert data["decode"]["float32_tokens_per_second"] > 0
    assert json.loads(out.read_text())["plan"] == "tiny"
    md = out.with_suffix(".md").read_text()
    assert "side by side" in md and "peak RSS" in md and "MFU" in md
    # the threads the product would choose under the load it saw are reported
    assert "default threads now: reader 1, writer" in md
    machine = json.loads(out.read_text())["machine"]
    assert machine["default_threads"]["reader"] == 1 and machine["default_threads"]["writer"] >= 1


def test_flops_per_token_counts_every_part():
    cfg = preset("small")
    f = bm.flops_per_token(cfg)
    d, L = cfg.d_model, cfg.n_layers
    assert f["projections"] == L * 2 * d * (d + d // 2 + d // 2 + d)  # q, k, v (2 of 4 heads), o
    assert f["feed_forward"] == L * 2 * 3 * d * cfg.ffn_dim
    assert f["total"] == pytest.approx(sum(v for k, v in f.items() if k != "total"))
    delta = bm.flops_per_token(preset("tiny-delta"))
    assert delta["memory_write"] > bm.flops_per_token(preset("tiny"))["memory_write"]


def test_transformers_baseline_has_the_same_weights_and_logits():
    """The transformers Llama and the memory-off model compute the same function."""
    model = random_model(preset("tiny"), seed=4)
    tokens = torch.randint(0, 64, (1, 50), generator=torch.Generator().manual_seed(0))
    full = bm.full_attention_model(model, 50)
    with torch.inference_mode():
        ours, _ = feed(full, StreamState.empty(full.config), tokens, use_memory=False)
        theirs = bm.transformers_llama(model, 50)(input_ids=tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_isolated_case_reports_rss_and_timeout():
    spec = {"engine": "infini", "tokens": 300, "preset": "tiny", "threads": 1, "ttft": True}
    r = bm.run_isolated(spec, timeout_s=120)
    assert r["status"] == "ok", r
    assert r["peak_rss_mb"] > 10 and r["tokens"] == 300 and r["ttft"]["document_tokens"] == 300
    assert bm.run_isolated(spec, timeout_s=0.01)["status"] == "timeout"


@pytest.mark.skipif(not int8_kernel_available(), reason="no weight-only int8 kernel in this torch")
def test_int8_linears_match_float_within_quantization_error():
    model = random_model(preset("tiny"), seed=5)
    tokens = torch.randint(0, 64, (40,), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref, _ = feed(model, StreamState.empty(model.config), tokens)
        q = use_int8_linears(random_model(preset("tiny"), seed=5))
        assert isinstance(q.layers[0].ffn.w13, Int8Linear) and isinstance(q.lm_head, Int8Linear)
        got, _ = feed(q, StreamState.empty(q.config), tokens)
    assert ((got - ref).norm() / ref.norm()).item() < 0.03


def test_every_engine_reads_the_same_tokens_whatever_the_chunk_size():
    whole = torch.cat(list(bm.token_chunks(3000, 4096, seed=0, chunk=4096)), dim=1)
    for chunk in (512, 7):
        torch.testing.assert_close(torch.cat(list(bm.token_chunks(3000, 4096, seed=0, chunk=chunk)), dim=1), whole)
