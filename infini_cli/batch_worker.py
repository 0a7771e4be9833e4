"""One batch worker: loads the model(s) once, then reads, asks or summarizes document after document.

Plain Python, no Ray import: `infini_cli.batch` wraps the class with `ray.remote` (a Ray actor
is one process holding one of these), and tests can run it in-process. A worker never raises
for a document: whatever goes wrong becomes the document's error row, so one bad PDF cannot
take down the worker, or the run, with it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Optional

READ, ASK, SUMMARIZE = "read", "ask", "summarize"
TASKS = (READ, ASK, SUMMARIZE)


@dataclass(frozen=True)
class Job:
    """What every document of a run gets done to; its `describe()` keys the output rows."""

    task: str                       # read | ask | summarize
    question: Optional[str] = None  # ask
    words: Optional[int] = None     # summarize
    top_k: int = 3                  # ask
    use_cache: bool = True
    model: Optional[str] = None     # --model as given (None: the task's default)

    def describe(self) -> dict:
        """The fields a row of this job carries (also on error rows), so a rerun can tell
        which rows answer the same request: the same task, question or summary length, and
        the same --model (another model's answers are new work, not done rows)."""
        asked = {"requested_model": self.model or "default"}
        if self.task == ASK:
            return {"task": ASK, "question": self.question, **asked}
        if self.task == SUMMARIZE:
            return {"task": SUMMARIZE, "budget": {"words": self.words, "sentences": None}, **asked}
        return {"task": READ, **asked}


@dataclass(frozen=True)
class WorkerSettings:
    job: Job
    model: Optional[str] = None     # a path (absolute: workers run elsewhere) or a model's name
    threads: int = 1                # the most torch threads this worker may use
    fixed_threads: bool = False     # --threads given: use exactly `threads`
    env: tuple[tuple[str, str], ...] = ()  # the driver's INFINI_* settings (cache, data dir, model)


def one_line(e: BaseException) -> str:
    """An exception as the CLI's one-line errors show it: the message for bad input, the type too otherwise."""
    from .checkpoint import CheckpointError
    from .errors import InputError

    first = (str(e).splitlines() or [""])[0]
    return first if isinstance(e, (InputError, CheckpointError)) else f"{type(e).__name__}: {first}".rstrip(": ")


class BatchWorker:
    """Loads once in the constructor; `run(path)` returns the document's row."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.startup_error: Optional[str] = None
        self.reader = self.writer = None
        try:
            os.environ.update(dict(settings.env))  # cache and data dirs as the driver has them
            self._load()
        except Exception as e:  # noqa: BLE001 - reported by ready(), not raised inside Ray's creation task
            self.startup_error = one_line(e)

    def _load(self) -> None:
        import torch

        from .loading import load_for_task, load_model

        s = self.settings
        threads = s.threads if s.fixed_threads else None
        if s.job.task == READ:
            self.reader = load_model(s.model, "cpu", threads, READ)
        else:
            self.reader, self.writer = load_for_task(s.model, "cpu", threads, s.job.task)
        if not s.fixed_threads:
            # the model's own default (one thread for a small reader, every core for a writer),
            # but never more than this worker's share of the machine: workers must not oversubscribe
            torch.set_num_threads(max(1, min(torch.get_num_threads(), s.threads)))

    def ready(self) -> dict:
        """How the worker started: its node, process, threads, or why it could not start."""
        import torch

        return {"node": _node_id(), "pid": os.getpid(), "threads": torch.get_num_threads(),
                "error": self.startup_error}

    def run(self, path: str) -> dict:
        """The document's row: the task's JSON plus its path, or its path and an error."""
        head = {"path": path, **self.settings.job.describe()}
        if self.startup_error is not None:
            return {**head, "error": self.startup_error}
        try:
            return {**head, **self._do(path)}
        except Exception as e:  # noqa: BLE001 - every failure is this document's error row
            return {**head, "error": one_line(e)}

    def _do(self, path: str) -> dict:
        from .readers import open_document

        job = self.settings.job
        with open_document(path) as doc:
            if job.task == ASK:
                from .tasks.ask import ask

                return ask(self.reader, doc, job.question or "", top_k=job.top_k, use_cache=job.use_cache,
                           quiet=True, writer=self.writer).as_dict()
            if job.task == SUMMARIZE:
                from .tasks.summarize import check_budget, summarize

                return summarize(self.reader, doc, check_budget(job.words, None), use_cache=job.use_cache,
                                 quiet=True, writer=self.writer).as_dict()
            from .tasks.reading import read_or_load

            # like `infini read`: always read (it measures reading), and save the memory so a
            # later ask or summarize of the same document starts from it
            read = read_or_load(self.reader, doc, [], use_cache=job.use_cache, quiet=True, lookup=False)
            return read.as_dict()


def _node_id() -> str:
    """The Ray node this worker runs on (two nodes may share a machine); the host name outside Ray."""
    try:
        import ray

        if ray.is_initialized():  # asking an uninitialized Ray would start one
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return socket.gethostname()  # not under Ray: tests run the worker in-process
