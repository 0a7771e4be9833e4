"""`infini batch`: many documents through Ray workers, one JSON line each, resumable.

The driver (this module) expands the inputs, skips what --out already holds, starts Ray (a
local instance for the run, or joins a cluster with --address), keeps one document in flight
per worker and writes each row the moment it arrives: a single writer, appending and flushing,
so rows survive Ctrl-C or a crash and a rerun carries on where the last one stopped. Workers
(batch_worker.BatchWorker, one Ray actor each) load the model once and read document after
document; the document cache is shared by all of them (a shared filesystem in a cluster).

Ray is an optional extra, imported only here and only when a run starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from .batch_worker import ASK, READ, SUMMARIZE, BatchWorker, Job, WorkerSettings
from .errors import InputError

RAY_MISSING = 'infini batch runs on Ray, which is not installed: pip install "infini[ray]"'
# what a folder is walked for; a file named on the command line or in a list is taken whatever its name
TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst", ".org", ".tex")
DOCUMENT_SUFFIXES = (".pdf", *TEXT_SUFFIXES)
# the driver's settings that workers need to find the same cache, data directory and models
FORWARDED_ENV = ("INFINI_CACHE_DIR", "XDG_CACHE_HOME", "INFINI_HOME", "XDG_DATA_HOME", "INFINI_MODEL")
# rows are a few KB: Ray's default object store (30% of memory, in /dev/shm) is far more than needed
LOCAL_OBJECT_STORE_BYTES = 128 << 20
WAIT_S = 0.5  # how often the progress line refreshes while no row arrives


# ----------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Input:
    """A document to do, or an input that could not be found (its row is an error, no worker needed)."""

    path: str
    error: Optional[str] = None


def expand_inputs(specs: list[str]) -> list[Input]:
    """Files as given, folders walked (sorted, PDFs and text files), `@list.txt` one path a line;
    absolute paths (workers may run elsewhere on a shared filesystem), duplicates removed."""
    seen: set[str] = set()
    out: list[Input] = []
    for spec in specs:
        items = _listed(Path(spec[1:])) if spec.startswith("@") else _expand(Path(spec))
        for item in items:
            if item.path not in seen:
                seen.add(item.path)
                out.append(item)
    return out


def _expand(p: Path) -> Iterator[Input]:
    p = p.expanduser().resolve()
    if p.is_dir():
        yield from (Input(str(f)) for f in walk_folder(p))
    elif p.exists():
        yield Input(str(p))
    else:
        yield Input(str(p), f"{p}: no such file; check the path")


def walk_folder(folder: Path) -> list[Path]:
    """Documents under `folder`, sorted; hidden files and folders are left out."""
    found = []
    for f in folder.rglob("*"):
        rel = f.relative_to(folder).parts
        if f.suffix.lower() in DOCUMENT_SUFFIXES and not any(part.startswith(".") for part in rel) and f.is_file():
            found.append(f)
    return sorted(found)


def _listed(list_file: Path) -> Iterator[Input]:
    """A list of paths: blank lines and # comments skipped, relative paths from the list's folder."""
    try:
        lines = list_file.expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        why = "no such file" if isinstance(e, FileNotFoundError) else f"cannot read it ({e})"
        yield Input(str(list_file.expanduser().resolve()),
                    f"@{list_file}: {why}; give a text file of paths, one a line")
        return
    base = list_file.expanduser().resolve().parent
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            yield from _expand(base / Path(line).expanduser())


# ----------------------------------------------------------------------------- the job and resuming

def make_job(question: Optional[str], summarize: bool, read: bool, words: Optional[int], top_k: int,
             use_cache: bool, model: Optional[str] = None) -> Job:
    """Exactly one of --ask, --summarize, --read, with the options that belong to it."""
    chosen = [name for name, on in ((ASK, question is not None), (SUMMARIZE, summarize), (READ, read)) if on]
    if len(chosen) != 1:
        raise InputError("give exactly one of --ask \"QUESTION\", --summarize or --read"
                         + (f" (got {', '.join('--' + c for c in chosen)})" if chosen else ""))
    task = chosen[0]
    if words is not None and task != SUMMARIZE:
        raise InputError("--words goes with --summarize")
    if task == ASK:
        from .tasks.ask import check_question

        if top_k < 1:
            raise InputError(f"--top-k {top_k}: give at least 1")
        return Job(ASK, question=check_question(question or ""), top_k=top_k, use_cache=use_cache, model=model)
    if task == SUMMARIZE:
        from .tasks.summarize import check_budget

        return Job(SUMMARIZE, words=check_budget(words, None).words, use_cache=use_cache, model=model)
    return Job(READ, use_cache=use_cache, model=model)


def row_key(row: dict) -> tuple:
    """Rows that answer the same request: the path, the task, the question or summary length,
    and the model asked for (a different question, or another model, is new work)."""
    budget = row.get("budget") or {}
    return row.get("path"), row.get("task"), row.get("question"), budget.get("words"), row.get("requested_model")


def iter_rows(out: Path) -> Iterator[dict]:
    """The rows of an earlier run, one at a time (the file may hold many thousands); a line cut
    short by a crash is skipped (its document is done again)."""
    if not out.exists():
        return
    with out.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row


def still_to_do(inputs: list[Input], job: Job, rows: Iterable[dict]) -> list[Input]:
    """Inputs without a successful row for this job; failed rows are retried."""
    done = {row_key(r) for r in rows if "error" not in r}
    return [i for i in inputs if row_key({"path": i.path, **job.describe()}) not in done]


class RowWriter:
    """The one writer of --out: a JSON line per row, appended and flushed as it comes."""

    def __init__(self, out: Path) -> None:
        if out.is_dir():
            raise InputError(f"--out {out}: is a folder; give a file, e.g. {out / 'results.jsonl'}")
        out.parent.mkdir(parents=True, exist_ok=True)
        ends_cleanly = not out.exists() or out.stat().st_size == 0 or _last_byte(out) == b"\n"
        self._f: IO[str] = out.open("a", encoding="utf-8")
        if not ends_cleanly:  # a row cut short by a crash: start the next one on a line of its own
            self._f.write("\n")

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


# ----------------------------------------------------------------------------- workers

def worker_share(node_cpus: list[int], workers: int) -> tuple[float, int]:
    """(CPUs each worker reserves in Ray, torch threads it may use), so workers never oversubscribe
    a node's cores and every worker can be placed: the largest whole share that fits `workers`
    times into the nodes, or a fraction of a core each when there are more workers than cores."""
    for share in range(max(1, sum(node_cpus) // workers), 0, -1):
        if sum(n // share for n in node_cpus) >= workers:
            return float(share), share
    per_core = -(-workers // max(1, sum(node_cpus)))  # ceil: workers sharing each core
    return round(1.0 / per_core, 4), 1


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


def start_ray(ray: Any, address: Optional[str]) -> None:
    """A quiet local Ray for this run, or the cluster at `address`."""
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        # "local": a fresh instance even when `ray start` left one running on this machine
        ray.init(address="local", include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
        return
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        # a port that answers but refuses the driver: most often `ray start`'s token authentication
        raise InputError(f"--address {address}: cannot join the Ray cluster there ({first}); if it uses token "
                         "authentication, set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or "
                         "~/.ray/auth_token, as on the head node)") from None


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT that takes no connection fails at once, in one line (Ray itself retries a dead
    address for minutes); "auto" and ray://... are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise InputError(f"--address {address}: cannot join a Ray cluster there ({e.strerror or e}); start one "
                         "with `ray start --head` and pass its address, e.g. HEAD:6379") from None


def forwarded_env() -> tuple[tuple[str, str], ...]:
    return tuple((k, os.environ[k]) for k in FORWARDED_ENV if os.environ.get(k))


# ----------------------------------------------------------------------------- the run

@dataclass
class BatchReport:
    total: int                 # documents named by the inputs
    skipped: int               # already done in --out
    done: int = 0
    failed: int = 0
    tokens: int = 0            # over all workers
    seconds: float = 0.0       # the run's wall time, Ray's start and the models' loading included
    startup_seconds: float = 0.0  # until the first worker was ready (Ray started, model loaded)
    workers: int = 0
    threads: int = 0           # torch threads per worker
    nodes: int = 0             # Ray nodes the workers ran on

    @property
    def docs_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "docs_per_second": round(self.docs_per_second, 3),
                "tokens_per_second": round(self.tokens_per_second, 1)}

    def summary(self) -> str:
        parts = [f"{self.done} done", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} already done")
        line = f"{self.total} document{'s' if self.total != 1 else ''}: " + ", ".join(parts)
        if self.workers:
            line += (f"; {self.tokens:,} tokens in {self.seconds:.1f} s ({self.tokens_per_second:,.0f} tokens/s, "
                     f"{self.docs_per_second:.2f} documents/s) on {self.workers} worker"
                     f"{'s' if self.workers != 1 else ''} x {self.threads} thread{'s' if self.threads != 1 else ''}"
                     + (f", {self.nodes} nodes" if self.nodes > 1 else ""))
        return line


class BatchProgress:
    """On stderr, only when it is a terminal: documents done and failed, tokens/s over all
    workers, and the time left (from the bytes still to read: documents differ in size)."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self._progress: Optional[Progress] = None
        self._enabled = enabled and console.is_terminal
        self._started = time.perf_counter()
        self._docs = self._done = self._failed = self._tokens = 0

    def start(self, docs: int, total_bytes: int) -> None:
        self._started, self._docs = time.perf_counter(), docs
        if not self._enabled:
            return
        self._progress = Progress(TextColumn("[bold]batch"), BarColumn(), TextColumn("{task.fields[docs]}"),
                                  TextColumn("[cyan]{task.fields[rate]}"), TimeRemainingColumn(),
                                  console=self.console, transient=True, refresh_per_second=4)
        self._progress.start()
        self._task = self._progress.add_task("batch", total=max(1, total_bytes), docs=self._docs_text(), rate="")

    def row(self, row: dict, n_bytes: int) -> None:
        failed = "error" in row
        self._done += not failed
        self._failed += failed
        self._tokens += int(row.get("tokens") or 0)
        if failed:
            from .terminal import plain

            where = "" if str(row.get("path")) in row["error"] else f"{row.get('path')}: "
            self.console.print(plain(f"failed: {where}{row['error']}", style="yellow"), soft_wrap=True)
        if self._progress is not None:
            rate = self._tokens / max(1e-9, time.perf_counter() - self._started)
            self._progress.update(self._task, advance=n_bytes, docs=self._docs_text(), rate=f"{rate:,.0f} tok/s")

    def refresh(self) -> None:
        if self._progress is not None:
            self._progress.refresh()

    def _docs_text(self) -> str:
        return f"{self._done + self._failed}/{self._docs} documents, {self._failed} failed"

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def run_batch(inputs: list[Input], settings: WorkerSettings, out: Path, workers: Optional[int] = None,
              address: Optional[str] = None, progress: Optional[BatchProgress] = None) -> BatchReport:
    """Do `settings.job` to every input not already done in `out`; rows are appended as they finish."""
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: give at least 1")
    if not inputs:
        raise InputError("the inputs name no document: give files, folders holding PDFs or text files, or @list.txt")
    ray = import_ray()  # before anything is written: without Ray, one line saying how to get it
    if address is not None:
        check_address(address)
    todo = still_to_do(inputs, settings.job, iter_rows(out))
    report = BatchReport(total=len(inputs), skipped=len(inputs) - len(todo))
    progress = progress or BatchProgress(Console(stderr=True), enabled=False)
    writer = RowWriter(out)
    try:
        progress.start(len(todo), sum(_size(i.path) for i in todo if i.error is None))
        for item in (i for i in todo if i.error is not None):  # nothing to send a worker
            _record(writer, progress, report, {"path": item.path, **settings.job.describe(), "error": item.error}, 0)
        docs = [i.path for i in todo if i.error is None]
        if docs:
            _run_on_ray(ray, docs, settings, workers, address, writer, progress, report)
    finally:
        progress.close()
        writer.close()
    return report


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _record(writer: RowWriter, progress: BatchProgress, report: BatchReport, row: dict, n_bytes: int) -> None:
    writer.write(row)
    failed = "error" in row
    report.done += not failed
    report.failed += failed
    report.tokens += 0 if failed else int(row.get("tokens") or 0)
    progress.row(row, n_bytes)


def _run_on_ray(ray: Any, docs: list[str], settings: WorkerSettings, workers: Optional[int], address: Optional[str],
                writer: RowWriter, progress: BatchProgress, report: BatchReport) -> None:
    started = time.perf_counter()
    owned = not ray.is_initialized()  # a program that already runs Ray (the library used from it) keeps it
    try:
        if owned:
            start_ray(ray, address)
        node_cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
        n_workers = max(1, min(workers or sum(node_cpus), len(docs)))
        cpus, threads = worker_share(node_cpus, n_workers)
        if not settings.fixed_threads:
            settings = dataclasses.replace(settings, threads=threads)
        settings = dataclasses.replace(settings, env=settings.env or forwarded_env())
        actor = ray.remote(BatchWorker).options(num_cpus=cpus)
        pool = [actor.remote(settings) for _ in range(n_workers)]
        report.workers, report.threads = n_workers, settings.threads
        _dispatch(ray, pool, deque(docs), settings.job, writer, progress, report, started)
    finally:
        report.seconds = time.perf_counter() - started
        if owned:
            ray.shutdown()  # the local instance stops; on a cluster the workers go, the cluster stays


def _dispatch(ray: Any, pool: list, queue: deque, job: Job, writer: RowWriter, progress: BatchProgress,
              report: BatchReport, started: float) -> None:
    """One document in flight per worker; each row is written as it arrives (ray.wait), and a
    worker that finishes gets the next document, so fast and slow workers share the load."""
    # each worker first says it is ready (it loaded the model) or why it could not start;
    # a worker Ray cannot place never gets a document, so it cannot hold up the run
    pending: dict[Any, tuple[Any, Optional[str]]] = {w.ready.remote(): (w, None) for w in pool}
    nodes: set[str] = set()
    startup_errors: list[str] = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
        progress.refresh()
        for ref in ready:
            worker, path = pending.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayActorError as e:  # the process died (out of memory, a crash)
                if path is not None:
                    why = (str(e).splitlines() or ["it died"])[0]
                    row = {"path": path, **job.describe(), "error": f"the worker died while doing this document: {why}"}
                    _record(writer, progress, report, row, _size(path))
                continue
            if path is None:
                if value["error"]:
                    startup_errors.append(value["error"])
                    continue
                nodes.add(value["node"])
                report.threads, report.nodes = value["threads"], len(nodes)
                report.startup_seconds = report.startup_seconds or time.perf_counter() - started
            else:
                _record(writer, progress, report, value, _size(path))
            if queue:
                nxt = queue.popleft()
                pending[worker.run.remote(nxt)] = (worker, nxt)
        if queue and not pending:
            why = f": {startup_errors[0]}" if startup_errors else " (see Ray's logs)"
            raise RuntimeError(f"no worker is left to do the {len(queue)} remaining documents{why}")
