"""Speed and memory, side by side, in one run: `infini bench` and benchmarks/bench_engine.py.

Lives outside the package (measurement is not the product); `infini bench` imports it from a
source checkout. The transformers baseline needs the test extra: pip install -e ".[test]".

What is measured (machines are noisy: read the ratios, not the absolute times):

1. the dense float32 matrix-product rate at the model's own linear shapes (segment_len rows, as
   ingest runs them), the model's FLOPs per token, ingest tokens/s, and their ratio: the model
   FLOP utilisation (MFU), plus the top entries of a torch.profiler run of the ingest loop;
2. the Infini engine, the same weights as a plain full-attention transformer (memory off, one
   segment covering the whole input, chunked prefill into a KV cache) and Hugging Face
   transformers' LlamaForCausalLM with the same shape and weights (sdpa, float32, chunked prefill
   with past_key_values): tokens/s and peak RSS at several lengths, each case in a fresh process
   with a time limit, reporting "timeout" / "out of memory" instead of failing;
3. peak RSS of the engine ingesting 10K .. 10M tokens, each in a fresh process;
4. single-token decoding tokens/s with float weights and with torch's int8 weight-only kernel,
   and the time to the first answer token after a long document;
5. on a CUDA machine, the same ingest in bfloat16 against the GPU's measured bf16 matmul rate.

Every engine reads the same seeded random token stream: speed does not depend on the tokens.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from infini_cli.config import ModelConfig, preset
from infini_cli.memory import StreamState
from infini_cli.model import InfiniTransformer

Log = Callable[[str], None]

ENGINES = ("infini", "full", "transformers")
ENGINE_SHORT = {"infini": "infini", "full": "full attn", "transformers": "HF"}
ENGINE_LABELS = {
    "infini": "Infini engine",
    "full": "full attention (same model, memory off)",
    "transformers": "transformers LlamaForCausalLM",
}


@dataclass
class Plan:
    """What one run measures. FULL is the reference run; QUICK fits in under a minute."""

    name: str = "full"
    compare_lengths: tuple[int, ...] = (4096, 16384, 65536)
    rss_lengths: tuple[int, ...] = (10_000, 100_000, 1_000_000, 10_000_000)
    ttft_tokens: int = 1_000_000          # time to the first answer token after this many tokens
    ingest_tokens: int = 32768            # in-process tokens/s measurement, per repeat
    repeats: int = 3                      # best of, for in-process timings
    decode_tokens: int = 128
    prefill_chunk: int = 512              # chunk size of the full-attention and transformers prefill
    square: int = 2048                    # reference square matmul size
    case_timeout_s: float = 1200.0        # per side-by-side case; RSS cases scale with their length
    min_time_s: float = 0.15              # per timing round of the matmul rates
    isolate: bool = True                  # a fresh process per case (False: in-process, for tests)
    preset: Optional[str] = None          # force a random model of this preset (tests: "tiny")
    profile: bool = True


FULL = Plan()
QUICK = Plan(name="quick", compare_lengths=(4096,), rss_lengths=(10_000, 100_000), ttft_tokens=100_000,
             ingest_tokens=8192, repeats=2, decode_tokens=32, square=1024, case_timeout_s=90.0)


def tiny_plan() -> Plan:
    """Seconds, on the tiny preset, in-process: the test suite's plan."""
    return Plan(name="tiny", compare_lengths=(256,), rss_lengths=(256, 512), ttft_tokens=512, ingest_tokens=256,
                repeats=1, decode_tokens=4, prefill_chunk=64, square=128, case_timeout_s=60.0, min_time_s=0.01, isolate=False,
                preset="tiny", profile=True)


# ----------------------------------------------------------------------------- small helpers

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def token_chunks(n: int, vocab: int, seed: int = 0, chunk: int = 4096,
                 device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """The same seeded random token stream for every engine and every chunk size, [1, chunk] at a
    time (never all at once: a 10M-token list would itself weigh more than the engine's state)."""
    gen = torch.Generator().manual_seed(seed)
    block = 256  # drawn in fixed blocks, so the ids do not depend on `chunk`
    buf = torch.empty(1, 0, dtype=torch.long)
    done = 0
    while done < n:
        k = min(chunk, n - done)
        while buf.shape[1] < k:
            buf = torch.cat((buf, torch.randint(0, vocab, (1, block), generator=gen)), dim=1)
        yield buf[:, :k].to(device)
        buf = buf[:, k:]
        done += k


def _status_mb(field_name: str) -> Optional[float]:
    """VmHWM / VmRSS of this process in MB (Linux), else ru_maxrss for the peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if field_name == "VmHWM":
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so loading's peak does not hide ingest's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def linear_shapes(cfg: ModelConfig) -> list[tuple[str, int, int]]:
    """(name, in, out) of every linear layer of one block, as the engine runs them."""
    d, H, G, D, Fd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim
    return [("wqkv", d, (H + 2 * G) * D), ("wo", H * D, d), ("w13", d, 2 * Fd), ("w2", Fd, d)]


def flops_per_token(cfg: ModelConfig, use_memory: bool = True) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) per ingested token, by part; the vocabulary projection is
    not computed during ingest and not counted. Elementwise work (norms, RoPE, SiLU, gates) is
    left out, as MFU figures usually do."""
    H, G, D, S, L = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.segment_len, cfg.n_layers
    proj = sum(2 * k * n for name, k, n in linear_shapes(cfg) if name in ("wqkv", "wo"))
    ffn = sum(2 * k * n for name, k, n in linear_shapes(cfg) if name in ("w13", "w2"))
    # causal attention inside the segment: query t sees t+1 keys, (S+1)/2 on average; QK^T and AV
    local = 2 * 2 * H * D * (S + 1) / 2
    parts = {"projections": proj * L, "feed_forward": ffn * L, "local_attention": local * L}
    if use_memory:
        read = H * (2 * D * D + 2 * D)                  # sigma(q) M and sigma(q) z
        write = G * (2 * D * D + D)                     # sigma(k)^T v and sum sigma(k)
        if cfg.memory_rule == "delta":
            write += G * (2 * D * D + 2 * D)            # retrieve before writing
        parts["memory_read"] = read * L
        parts["memory_write"] = write * L
    parts["total"] = sum(parts.values())
    return parts


def _best_time(fn: Callable[[], Any], device: torch.device, min_time: float = 0.15, repeats: int = 3) -> float:
    """Best seconds per call over `repeats` rounds of at least `min_time` seconds each."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    n = max(1, int(min_time / one))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def matmul_rate(cfg: ModelConfig, rows: int, device: torch.device, dtype: torch.dtype,
                min_time: float = 0.15, repeats: int = 3) -> dict[str, Any]:
    """GFLOP/s of F.linear (the engine's call: x [rows, in] @ W[out, in]^T) at every linear shape
    of the model, FLOP-weighted: total FLOPs of one pass over the shapes / total best time."""
    per_shape = {}
    total_flops = total_time = 0.0
    for name, k, n in linear_shapes(cfg):
        x = torch.randn(rows, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype)
        dt = _best_time(lambda x=x, w=w: F.linear(x, w), device, min_time, repeats)
        flops = 2.0 * rows * k * n
        per_shape[f"{name} {rows}x{k}x{n}"] = round(flops / dt / 1e9, 2)
        total_flops += flops
        total_time += dt
    return {"gflops": total_flops / total_time / 1e9, "rows": rows, "per_shape": per_shape}


def square_matmul_rate(n: int, device: torch.device, dtype: torch.dtype, repeats: int = 3,
                       min_time: float = 0.3) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    dt = _best_time(lambda: a @ b, device, min_time=min_time, repeats=repeats)
    return 2.0 * n ** 3 / dt / 1e9


# ----------------------------------------------------------------------------- models

def build_model(model_path: Optional[str], preset_name: Optional[str], device: torch.device,
                dtype: torch.dtype = torch.float32) -> tuple[InfiniTransformer, str]:
    """The checkpoint at model_path, or (preset_name set, or no checkpoint at the default path) a
    randomly initialised model of that preset; returns (model, a one-line description)."""
    if preset_name is None and model_path is not None and Path(model_path).exists():
        from infini_cli.checkpoint import load_checkpoint

        loaded = load_checkpoint(model_path, device, dtype)
        return loaded.model, f"{model_path} ({loaded.header.quant.name} weights, computed in {str(dtype)[6:]})"
    name = preset_name or "small"
    model = InfiniTransformer(preset(name)).init_weights(0).eval().to(device=device, dtype=dtype)
    why = f"no checkpoint at {model_path}; " if model_path is not None and preset_name is None else ""
    return model, f"{why}random weights, preset {name!r} (speed does not depend on the weights)"


def full_attention_model(model: InfiniTransformer, length: int) -> InfiniTransformer:
    """The same weights as a plain transformer: one segment covers the whole input (+1, so it is
    never written to memory), to be run with use_memory=False."""
    cfg = dataclasses.replace(model.config, segment_len=length + 1)
    p = next(model.parameters())
    full = InfiniTransformer(cfg).to(device=p.device, dtype=p.dtype)
    full.load_state_dict(model.state_dict())
    return full.eval()


_HF_LAYER = {
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def transformers_llama(model: InfiniTransformer, max_positions: int):
    """transformers' LlamaForCausalLM with our shape and weights (the reverse of convert.py's
    mapping; the memory gates have no counterpart), sdpa attention, in our weights' dtype."""
    import transformers

    cfg = model.config
    p = next(model.parameters())
    hcfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=max_positions, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
    )
    hcfg._attn_implementation = "sdpa"
    hf = transformers.LlamaForCausalLM(hcfg).to(device=p.device, dtype=p.dtype).eval()
    sd = {}
    for name, t in model.state_dict().items():
        if name.endswith("attn.gate"):
            continue
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            if rest == "attn.wqkv.weight":  # our fused projections, split back into HF's three
                H, G, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
                parts = dict(zip(("attn.wq.weight", "attn.wk.weight", "attn.wv.weight"),
                                 t.split((H * D, G * D, G * D))))
            elif rest == "ffn.w13.weight":
                parts = dict(zip(("ffn.w1.weight", "ffn.w3.weight"), t.chunk(2)))
            else:
                parts = {rest: t}
            for r, w in parts.items():
                sd[f"model.layers.{i}.{_HF_LAYER[r]}"] = w.contiguous()
        elif name == "embed.weight":
            sd["model.embed_tokens.weight"] = t
        elif name == "norm.weight":
            sd["model.norm.weight"] = t
        elif name == "lm_head.weight":
            sd["lm_head.weight"] = t
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [m for m in missing if "rotary_emb" not in m and not (cfg.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"transformers Llama weights do not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return hf


# ----------------------------------------------------------------------------- one case

@torch.inference_mode()
def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement, meant to run alone in a fresh process: build the engine, reset the peak
    RSS, stream `tokens` tokens, report tokens/s and memory. spec keys: engine, tokens, model_path,
    preset, threads, chunk, ttft (bool), seed."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device("cpu")
    engine, n = spec["engine"], int(spec["tokens"])
    model, _ = build_model(spec.get("model_path"), spec.get("preset"), device)
    cfg = model.config
    chunk = int(spec.get("chunk", 512))
    seed = int(spec.get("seed", 0))
    if engine == "infini":
        from infini_cli.stream import ingest

        def run() -> Any:
            return ingest(model, StreamState.empty(cfg), token_chunks(n, cfg.vocab_size, seed))
        warm = lambda: ingest(model, StreamState.empty(cfg), token_chunks(2 * cfg.segment_len, cfg.vocab_size, 1))  # noqa: E731
    elif engine == "full":
        from infini_cli.stream import feed

        full = full_attention_model(model, n)
        del model

        def run() -> Any:
            state = StreamState.empty(full.config)
            for t in token_chunks(n, cfg.vocab_size, seed, chunk):
                _, state = feed(full, state, t, logits="none", use_memory=False)
            return state

        def warm() -> Any:
            return feed(full, StreamState.empty(full.config), next(token_chunks(chunk, cfg.vocab_size, 1, chunk)),
                        logits="none", use_memory=False)
    elif engine == "transformers":
        import inspect

        hf = transformers_llama(model, n)
        del model
        # transformers 5 renamed past_key_values to cache (4.x: past_key_values)
        key = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"

        def run() -> Any:
            past = None
            for t in token_chunks(n, cfg.vocab_size, seed, chunk):
                out = hf(input_ids=t, use_cache=True, logits_to_keep=1, **{key: past})
                past = getattr(out, key)
            return past

        def warm() -> Any:
            return hf(input_ids=next(token_chunks(chunk, cfg.vocab_size, 1, chunk)), use_cache=True, logits_to_keep=1)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    warm()
    load_peak = _status_mb("VmHWM")
    reset = _reset_peak_rss()
    rss_before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {
        "status": "ok", "engine": engine, "tokens": n, "seconds": round(seconds, 3),
        "tokens_per_second": round(n / seconds, 1),
        "rss_before_mb": round(rss_before, 1) if rss_before is not None else None,
        "peak_rss_mb": round(_status_mb("VmHWM") or 0.0, 1),
        "peak_rss_scope": "ingest (peak reset after loading)" if reset else "whole process",
        "load_peak_rss_mb": round(load_peak, 1) if load_peak is not None else None,
    }
    if spec.get("ttft") and engine == "infini":
        from infini_cli.stream import feed

        question = next(token_chunks(16, cfg.vocab_size, 2, 16))
        t0 = time.perf_counter()
        logits, _ = feed(model, result, question, logits="last")
        int(logits[0, -1].argmax())
        q = time.perf_counter() - t0
        out["ttft"] = {"document_tokens": n, "ingest_s": round(seconds, 3), "question_tokens": 16,
                       "question_to_first_token_s": round(q, 4), "total_s": round(seconds + q, 3)}
    return out


def _child_main() -> None:
    """Entry of the per-case subprocess: JSON spec on stdin, one JSON line on stdout."""
    spec = json.loads(sys.stdin.read())
    try:
        res = run_case(spec)
    except MemoryError:
        res = {"status": "out of memory"}
    except ImportError as e:
        res = {"status": f"skipped: {e} (pip install transformers)"}
    except RuntimeError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        oom = any(s in msg.lower() for s in ("out of memory", "can't allocate", "cannot allocate", "bad_alloc"))
        res = {"status": "out of memory" if oom else f"error: {msg[:200]}"}
    sys.stdout.write("\n" + json.dumps(res) + "\n")
    sys.stdout.flush()


def run_isolated(spec: dict[str, Any], timeout_s: float, isolate: bool = True) -> dict[str, Any]:
    """run_case in a fresh Python process (so peaks do not pollute each other) with a time limit."""
    if not isolate:
        try:
            return run_case(spec)
        except MemoryError:
            return {"status": "out of memory"}
        except ImportError as e:
            return {"status": f"skipped: {e} (pip install transformers)"}
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    here = str(Path(__file__).resolve().parent)
    cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); from engine_bench import _child_main; _child_main()"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, input=json.dumps(spec), capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "limit_s": round(timeout_s)}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    if lines:
        res = json.loads(lines[-1])
        res["process_wall_s"] = round(wall, 2)
        return res
    if proc.returncode in (-9, 137):  # SIGKILL without our timeout: the kernel's OOM killer
        return {"status": "out of memory", "detail": "killed by the system (SIGKILL)"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": f"error: exit {proc.returncode}: {tail[:200]}"}


# ----------------------------------------------------------------------------- in-process parts

@torch.inference_mode()
def ingest_rate(model: InfiniTransformer, n_tokens: int, repeats: int, device: torch.device) -> float:
    from infini_cli.stream import ingest

    cfg = model.config
    dtype = next(model.parameters()).dtype
    chunks = list(token_chunks(n_tokens, cfg.vocab_size, 0, device=device))
    ingest(model, StreamState.empty(cfg, device=device, dtype=dtype), [chunks[0][:, :2 * cfg.segment_len]])  # warm-up
    best = float("inf")
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = time.perf_counter()
        ingest(model, StreamState.empty(cfg, device=device, dtype=dtype), chunks)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return n_tokens / best


@contextmanager
def _quiet_fds() -> Iterator[None]:
    """Silence the C++ profiler's own start/stop lines (written straight to fd 1/2), so --json
    output stays one object."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass
    try:
        yield
    finally:
        for fd, copy_fd in saved:
            os.dup2(copy_fd, fd)
            os.close(copy_fd)


@torch.inference_mode()
def profile_ingest(model: InfiniTransformer, n_tokens: int, top: int = 10) -> list[dict[str, Any]]:
    """The ingest loop under torch.profiler: the top operators by their own CPU time."""
    from torch.profiler import ProfilerActivity, profile

    from infini_cli.stream import ingest

    cfg = model.config
    chunks = list(token_chunks(n_tokens, cfg.vocab_size, 0))
    ingest(model, StreamState.empty(cfg), chunks[:1])
    with _quiet_fds(), profile(activities=[ProfilerActivity.CPU]) as prof:
        ingest(model, StreamState.empty(cfg), chunks)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_share": round(e.self_cpu_time_total / total, 4), "calls": e.count,
             "self_us_per_call": round(e.self_cpu_time_total / max(e.count, 1), 1)} for e in rows]


@torch.inference_mode()
def decode_rate(model: InfiniTransformer, n_new: int, repeats: int = 2) -> float:
    """Steady single-token decoding tokens/s (batch 1, greedy, the real `generate` loop) after a
    context of two and a half segments."""
    from infini_cli.stream import generate, ingest

    cfg = model.config
    state = ingest(model, StreamState.empty(cfg), token_chunks(2 * cfg.segment_len + cfg.segment_len // 2,
                                                               cfg.vocab_size, 3))
    best = float("inf")
    for _ in range(max(1, repeats)):
        it = generate(model, state, [1, 2, 3], n_new + 1)
        next(it)  # the prompt's forward and the first token
        t0 = time.perf_counter()
        for _ in it:
            pass
        best = min(best, time.perf_counter() - t0)
    return n_new / best


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "threads": threads,
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        from importlib.metadata import version

        info["transformers"] = version("transformers")  # without importing it (seconds)
    except Exception:  # noqa: BLE001 - not installed, or broken metadata
        info["transformers"] = None
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    from infini_cli.device import SMALL_MODEL_PARAMETERS, busy_cores, default_threads

    # what the product would choose now without --threads (busy cores come from the load average)
    info["busy_cores"] = busy_cores()
    info["default_threads"] = {"reader": default_threads(1), "writer": default_threads(10 * SMALL_MODEL_PARAMETERS)}
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


# ----------------------------------------------------------------------------- the whole run

def _k(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}K"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def run_benchmark(plan: Plan, model_path: Optional[str] = None, threads: Optional[int] = None,
                  cuda: Optional[torch.device] = None, log: Log = lambda s: None) -> dict[str, Any]:
    """Measure everything the plan asks for; returns one JSON-able dict."""
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    cpu = torch.device("cpu")
    t_start = time.perf_counter()
    res: dict[str, Any] = {"plan": plan.name, "machine": machine_info(threads), "notes": []}
    model, source = build_model(model_path, plan.preset, cpu)
    cfg = model.config
    res["model"] = {"source": source, "config": dataclasses.asdict(cfg),
                    "parameters": sum(p.numel() for p in model.parameters())}
    log(f"model: {source}")
    if "random weights" in source:
        res["notes"].append(f"model: {source}")

    # 1. compute limit, FLOPs, ingest rate, MFU
    fl = flops_per_token(cfg)
    res["flops_per_token"] = fl["total"]
    res["flops_breakdown"] = {k: v for k, v in fl.items() if k != "total"}
    # the limit and the engine are timed in alternating rounds, best of each, so that a busy
    # spell on a shared machine does not land on one side of the ratio only
    mm: dict[str, Any] = {"gflops": 0.0}
    tps = 0.0
    for _ in range(plan.repeats):
        r = matmul_rate(cfg, cfg.segment_len, cpu, torch.float32, plan.min_time_s, repeats=2)
        mm = r if r["gflops"] > mm["gflops"] else mm
        tps = max(tps, ingest_rate(model, plan.ingest_tokens, 1, cpu))
    res["cpu_matmul_gflops"] = round(mm["gflops"], 2)
    res["cpu_matmul_gflops_per_shape"] = mm["per_shape"]
    log(f"float32 matmul at the model's shapes ({cfg.segment_len} rows): {mm['gflops']:.1f} GFLOP/s")
    sq = square_matmul_rate(plan.square, cpu, torch.float32, plan.repeats, 2 * plan.min_time_s)
    res["cpu_matmul_gflops_square"] = {"n": plan.square, "gflops": round(sq, 2)}
    log(f"float32 {plan.square}x{plan.square} matmul: {sq:.1f} GFLOP/s")
    res["ingest_tokens_per_second"] = round(tps, 1)
    res["mfu"] = round(fl["total"] * tps / (mm["gflops"] * 1e9), 4)
    log(f"ingest: {tps:,.0f} tokens/s x {fl['total'] / 1e6:.2f} MFLOP/token = "
        f"{fl['total'] * tps / 1e9:.1f} GFLOP/s, MFU {res['mfu']:.0%}")
    if plan.profile:
        res["ingest_profile_top"] = profile_ingest(model, min(plan.ingest_tokens, 64 * cfg.segment_len))
        top = ", ".join(f"{r['op']} {r['self_share']:.0%}" for r in res["ingest_profile_top"][:4])
        log(f"ingest profile (self CPU time): {top}")

    # 2. side by side
    spec_base = {"model_path": str(model_path) if model_path is not None else None, "preset": plan.preset,
                 "threads": threads, "chunk": plan.prefill_chunk, "seed": 0}
    compare: dict[str, dict[str, Any]] = {e: {} for e in ENGINES}
    for engine in ENGINES:
        stopped: Optional[str] = None
        for n in plan.compare_lengths:
            if stopped:
                compare[engine][str(n)] = {"status": f"skipped ({stopped})"}
                continue
            r = run_isolated({**spec_base, "engine": engine, "tokens": n}, plan.case_timeout_s, plan.isolate)
            compare[engine][str(n)] = r
            log(f"{ENGINE_LABELS[engine]} at {_k(n)} tokens: " + _case_summary(r))
            if r.get("status") != "ok":
                stopped = f"{r['status']} at {_k(n)}"
    res["compare"] = compare
    res["compare_method"] = {
        "infini": f"ingest in segments of {cfg.segment_len} tokens, memory on",
        "full": f"one segment covering the whole input; chunked prefill into its KV cache, "
                f"{plan.prefill_chunk}-token chunks",
        "transformers": f"same shape and weights, attn_implementation=sdpa, float32; chunked prefill "
                        f"with a DynamicCache, {plan.prefill_chunk}-token chunks, logits_to_keep=1",
    }
    ref_n = 4096 if 4096 in plan.compare_lengths else plan.compare_lengths[0]
    a, b = compare["infini"].get(str(ref_n), {}), compare["transformers"].get(str(ref_n), {})
    res["speedup_vs_transformers"] = (round(a["tokens_per_second"] / b["tokens_per_second"], 3)
                                      if a.get("status") == "ok" and b.get("status") == "ok" else None)
    res["speedup_vs_transformers_at"] = ref_n
    res["speedup_vs_transformers_by_length"] = {
        n: round(compare["infini"][n]["tokens_per_second"] / r["tokens_per_second"], 3)
        for n, r in compare["transformers"].items()
        if r.get("status") == "ok" and compare["infini"].get(n, {}).get("status") == "ok"}
    f = compare["full"].get(str(ref_n), {})
    res["speedup_vs_full_attention"] = (round(a["tokens_per_second"] / f["tokens_per_second"], 3)
                                        if a.get("status") == "ok" and f.get("status") == "ok" else None)

    # 3. + 4b. peak RSS over lengths, and the time to the first answer token
    rss: dict[str, Any] = {}
    sweep: dict[str, Any] = {}
    for n in plan.rss_lengths:
        limit = max(plan.case_timeout_s, 60 + 4 * n / max(tps, 1.0))
        r = run_isolated({**spec_base, "engine": "infini", "tokens": n, "ttft": n == plan.ttft_tokens}, limit,
                         plan.isolate)
        sweep[str(n)] = r
        rss[str(n)] = r.get("peak_rss_mb") if r.get("status") == "ok" else r.get("status")
        log(f"Infini engine, peak RSS at {_k(n)} tokens: " + _case_summary(r))
        if "ttft" in r:
            res["time_to_first_token"] = r["ttft"]
    res["peak_rss_mb"] = rss
    res["rss_sweep"] = sweep
    vals = [v for v in rss.values() if isinstance(v, (int, float))]
    res["peak_rss_spread"] = round((max(vals) - min(vals)) / min(vals), 4) if len(vals) > 1 else None
    if not plan.isolate:
        res["notes"].append("cases ran in-process (tests): the RSS figures are not per case")

    # 4. decoding, float and int8 weights
    from infini_cli.quantize import int8_kernel_available, use_int8_linears

    dec: dict[str, Any] = {}
    if int8_kernel_available(cpu):
        q = use_int8_linears(copy.deepcopy(model))
        n_ing = min(plan.ingest_tokens, 4096)
        best = {"f_dec": 0.0, "q_dec": 0.0, "f_ing": 0.0, "q_ing": 0.0}
        for _ in range(plan.repeats):  # alternating rounds, best of each
            best["f_dec"] = max(best["f_dec"], decode_rate(model, plan.decode_tokens, 1))
            best["q_dec"] = max(best["q_dec"], decode_rate(q, plan.decode_tokens, 1))
            best["f_ing"] = max(best["f_ing"], ingest_rate(model, n_ing, 1, cpu))
            best["q_ing"] = max(best["q_ing"], ingest_rate(q, n_ing, 1, cpu))
        dec["float32_tokens_per_second"] = round(best["f_dec"], 1)
        dec["int8_tokens_per_second"] = round(best["q_dec"], 1)
        dec["int8_speedup"] = round(best["q_dec"] / best["f_dec"], 3)
        dec["float32_ingest_tokens_per_second"] = round(best["f_ing"], 1)
        dec["int8_ingest_tokens_per_second"] = round(best["q_ing"], 1)
        dec["int8_kernel"] = "aten::_weight_int8pack_mm, int8 per-channel weights, bfloat16 activations"
        del q
    else:
        dec["float32_tokens_per_second"] = round(decode_rate(model, plan.decode_tokens, plan.repeats), 1)
        dec["int8_tokens_per_second"] = None
        dec["int8_kernel"] = f"none in torch {torch.__version__} on this CPU"
    res["decode"] = dec
    log(f"decode: float32 {dec['float32_tokens_per_second']:,.0f} tokens/s, "
        f"int8 {dec['int8_tokens_per_second'] or 0:,.0f} tokens/s")

    # 5. CUDA
    if cuda is not None:
        res["cuda"] = cuda_figures(model_path, plan, cuda, log)

    res["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    return res


def cuda_figures(model_path: Optional[str], plan: Plan, device: torch.device, log: Log) -> dict[str, Any]:
    """bfloat16 ingest on the GPU against the GPU's measured bf16 matmul rate at the model's shapes."""
    model, _ = build_model(model_path, plan.preset, device, torch.bfloat16)
    cfg = model.config
    mm = matmul_rate(cfg, cfg.segment_len, device, torch.bfloat16)
    sq = square_matmul_rate(4096, device, torch.bfloat16)
    tps = ingest_rate(model, plan.ingest_tokens, plan.repeats, device)
    fl = flops_per_token(cfg)["total"]
    out = {"device": torch.cuda.get_device_name(device), "dtype": "bfloat16",
           "matmul_gflops_at_shapes": round(mm["gflops"], 1), "matmul_gflops_square_4096": round(sq, 1),
           "ingest_tokens_per_second": round(tps, 1), "mfu": round(fl * tps / (mm["gflops"] * 1e9), 4),
           "share_of_square_rate": round(fl * tps / (sq * 1e9), 4)}
    log(f"cuda bf16: {tps:,.0f} tokens/s, {out['mfu']:.0%} of the matmul rate at the model's shapes")
    return out


def _case_summary(r: dict[str, Any]) -> str:
    if r.get("status") != "ok":
        return str(r.get("status")) + (f" (limit {r['limit_s']} s)" if "limit_s" in r else "")
    return f"{r['tokens_per_second']:,.0f} tokens/s, peak RSS {r['peak_rss_mb']:,.0f} MB"


# ----------------------------------------------------------------------------- reporting

def _cell(r: Optional[dict[str, Any]], what: str) -> str:
    if not r:
        return "-"
    if r.get("status") != "ok":
        s = str(r.get("status"))
        return s + (f" (>{r['limit_s']} s)" if "limit_s" in r else "")
    if what == "tps":
        return f"{r['tokens_per_second']:,.0f}"
    return f"{r['peak_rss_mb']:,.0f}"


def report_tables(res: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table; the markdown and the terminal print the same ones."""
    m = res["machine"]
    fl = res["flops_breakdown"]
    tables = []
    rows = [
        ["float32 matmul at the model's shapes", f"{res['cpu_matmul_gflops']:.1f} GFLOP/s"],
        [f"float32 {res['cpu_matmul_gflops_square']['n']}² matmul (reference)",
         f"{res['cpu_matmul_gflops_square']['gflops']:.1f} GFLOP/s"],
        ["FLOPs per token", f"{res['flops_per_token'] / 1e6:.2f} M (" + ", ".join(
            f"{k.replace('_', ' ')} {v / 1e6:.2f}" for k, v in fl.items()) + ")"],
        ["ingest", f"{res['ingest_tokens_per_second']:,.0f} tokens/s"],
        ["model FLOP utilisation (MFU)", f"{res['mfu']:.0%}"],
    ]
    d = res["decode"]
    rows.append(["decode, float32 weights", f"{d['float32_tokens_per_second']:,.0f} tokens/s"])
    if d.get("int8_tokens_per_second"):
        rows.append(["decode, int8 weights", (f"{d['int8_tokens_per_second']:,.0f} tokens/s "
                                              f"({d['int8_speedup']:.2f}x float32)")])
        rows.append(["ingest, int8 weights", (f"{d['int8_ingest_tokens_per_second']:,.0f} tokens/s (float32 in the "
                                              f"same rounds: {d['float32_ingest_tokens_per_second']:,.0f})")])
    else:
        rows.append(["decode, int8 weights", d["int8_kernel"]])
    t = res.get("time_to_first_token")
    if t:
        rows.append([f"first answer token after a {_k(t['document_tokens'])}-token document",
                     f"{t['total_s']:,.1f} s (reading {t['ingest_s']:,.1f} s + question {t['question_to_first_token_s']:.3f} s)"])
    if res.get("speedup_vs_transformers") is not None:
        rows.append([f"speed vs transformers at {_k(res['speedup_vs_transformers_at'])}",
                     f"{res['speedup_vs_transformers']:.2f}x"])
    tables.append((f"compute ({m['threads']} thread{'s' if m['threads'] != 1 else ''})", ["measure", "value"], rows))

    lengths = list(res["compare"]["infini"].keys())
    header = ["tokens"] + [f"{ENGINE_SHORT[e]} {x}" for e in ENGINES for x in ("tok/s", "MB")]
    rows = [[_k(int(n))] + [_cell(res["compare"][e].get(n), w) for e in ENGINES for w in ("tps", "rss")]
            for n in lengths]
    tables.append(("side by side: same shape, same weights, same input (tokens/s, peak RSS MB)", header, rows))

    rows = []
    base = None
    for n, r in res["rss_sweep"].items():
        if r.get("status") == "ok":
            base = base or r["peak_rss_mb"]
            rows.append([_k(int(n)), f"{r['peak_rss_mb']:,.0f}", f"{(r['peak_rss_mb'] / base - 1):+.1%}",
                         f"{r['tokens_per_second']:,.0f}"])
        else:
            rows.append([_k(int(n)), _cell(r, "rss"), "-", "-"])
    tables.append(("Infini engine: peak RSS while ingesting", ["tokens", "peak RSS MB", "vs first", "tokens/s"], rows))

    c = res.get("cuda")
    if c:
        tables.append((f"CUDA ({c['device']}, bfloat16)", ["measure", "value"], [
            ["bf16 matmul at the model's shapes", f"{c['matmul_gflops_at_shapes']:,.0f} GFLOP/s"],
            ["bf16 4096² matmul", f"{c['matmul_gflops_square_4096']:,.0f} GFLOP/s"],
            ["ingest", f"{c['ingest_tokens_per_second']:,.0f} tokens/s"],
            ["share of the matmul rate at the model's shapes", f"{c['mfu']:.0%}"],
            ["share of the 4096² rate", f"{c['share_of_square_rate']:.1%}"],
        ]))
    prof = res.get("ingest_profile_top")
    if prof:
        tables.append(("ingest profile: top operators by own CPU time", ["operator", "share", "calls", "µs/call"],
                       [[p["op"], f"{p['self_share']:.1%}", str(p["calls"]), f"{p['self_us_per_call']:,.1f}"]
                        for p in prof[:8]]))
    return tables


def to_markdown(res: dict[str, Any], command: str = "infini bench") -> str:
    m = res["machine"]
    lines = [
        f"Measured with `{command}` ({res['plan']} plan) on {m['date']}: {m['cpu']}, {m['cores']} cores, "
        f"{m['threads']} torch thread{'s' if m['threads'] != 1 else ''} ({m['cpu_capability']}), torch {m['torch']}, transformers {m['transformers']}"
        + (f", load average at start {m['load_average_at_start'][0]}" if "load_average_at_start" in m else "")
        + (f"; default threads now: reader {m['default_threads']['reader']}, writer {m['default_threads']['writer']}"
           f" ({m['busy_cores']} core(s) busy with other work)" if "default_threads" in m else "") + ".",
        (f"Model: {res['model']['source']}; {res['model']['parameters']:,} parameters, "
         f"segment {res['model']['config']['segment_len']}, {res['model']['config']['memory_rule']} memory. "
         f"Run time {res['elapsed_s']:,.0f} s."),
        "",
    ]
    for title, header, rows in report_tables(res):
        lines += [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    lines.append("Methods: " + "; ".join(f"{ENGINE_LABELS[k]}: {v}" for k, v in res["compare_method"].items()) + ".")
    for note in res["notes"]:
        lines.append(f"Note: {note}.")
    return "\n".join(lines) + "\n"


def print_report(res: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    for title, header, rows in report_tables(res):
        t = Table(title=title)
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right", style="bold" if i == 0 else None)
        for r in rows:
            t.add_row(*r)
        console.print(t)
    m = res["machine"]
    console.print(f"{m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, torch {m['torch']}; "
                  f"model: {res['model']['source']}; {res['elapsed_s']:,.0f} s")
    if "default_threads" in m:
        console.print(f"default threads without --threads: reader {m['default_threads']['reader']}, writer "
                      f"{m['default_threads']['writer']} ({m['busy_cores']} of {m['cores']} cores busy with other "
                      f"work, load average {m.get('load_average_at_start', ['?'])[0]})")


def write_results(res: dict[str, Any], out: Path, command: str) -> tuple[Path, Path]:
    """JSON to `out`, the markdown tables beside it (same name, .md)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(to_markdown(res, command))
    return out, md
