"""Read once, ask many: a document's memory saved on disk, keyed by document and model.

An entry is a folder `<doc sha256[:20]>-<model hash[:12]>/` in the cache directory
($INFINI_CACHE_DIR, else $XDG_CACHE_HOME/infini, else ~/.cache/infini) holding:

- state.safetensors: the StreamState after the whole document (per layer M, z and the
  unfinished segment's keys and values), checked for shape and finiteness when loaded;
- named record files (`<name>.jsonl.gz`, one JSON object a line, written as the document
  streams by, never held in memory as a whole) and named JSON files (`<name>.json.gz`):
  what they hold is the tasks' business (tasks/reading.py stores the sentences and the
  lexical index), so this module knows nothing of them;
- meta.json: the keys, the file list and what the reader said about the document.

Entries are written in a temporary folder and renamed into place, so a crash or Ctrl-C never
leaves a half entry that looks complete, and two processes writing the same entry (batch
workers on a shared filesystem) each rename a whole one: the last rename wins.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch

if TYPE_CHECKING:
    from .config import ModelConfig
    from .memory import StreamState

CACHE_VERSION = "2"
STATE_FILE, META_FILE = "state.safetensors", "meta.json"


def records_file(name: str) -> str:
    return f"{name}.jsonl.gz"


def json_file(name: str) -> str:
    return f"{name}.json.gz"


def cache_dir() -> Path:
    env = os.environ.get("INFINI_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "infini"


@dataclass
class CacheEntry:
    path: Path
    meta: dict

    @property
    def key(self) -> str:
        return self.path.name

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def load_state(self, config: "ModelConfig", device: torch.device, dtype: torch.dtype) -> "StreamState":
        """The saved memory, checked against the model before anything uses it (raises ValueError)."""
        from safetensors.torch import load_file

        from .memory import StreamState

        tensors = load_file(str(self.path / STATE_FILE), device="cpu")
        n, d = config.n_kv_heads, config.head_dim
        for i in range(config.n_layers):
            want = {"M": (1, n, d, d), "z": (1, n, d)}
            for name, shape in want.items():
                t = tensors.get(f"{i}.{name}")
                if t is None or tuple(t.shape) != shape or not torch.isfinite(t).all():
                    raise ValueError(f"layer {i} {name} is missing, misshapen or not finite")
            for name in ("k_local", "v_local"):
                t = tensors.get(f"{i}.{name}")
                if t is None or t.dim() != 4 or tuple(t.shape[:2]) != (1, n) or t.shape[3] != d \
                        or t.shape[2] >= config.segment_len or not torch.isfinite(t).all():
                    raise ValueError(f"layer {i} {name} is missing, misshapen or not finite")
        st = StreamState.from_tensors(tensors, config.n_layers, int(self.meta["tokens_seen"]),
                                      int(self.meta["segments_written"]))
        st.k_local = [t.to(dtype) for t in st.k_local]
        st.v_local = [t.to(dtype) for t in st.v_local]
        return st.to(device)

    def read_json(self, name: str) -> Any:
        with gzip.open(self.path / json_file(name), "rt", encoding="utf-8") as f:
            return json.load(f)

    def records(self, name: str) -> Iterator[dict]:
        """A record file, streamed from disk one record at a time."""
        with gzip.open(self.path / records_file(name), "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def touch(self) -> None:
        self.meta["last_used"] = time.time()
        try:
            # another process (a batch worker) may be reading meta.json: it sees the old or the
            # new one, never a half-written file that would make the entry look invalid
            _write_atomic(self.path / META_FILE, json.dumps(self.meta))
        except OSError:
            pass


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{time.time_ns()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _remove_stale(folder: Path, aside: Path) -> None:
    """An incomplete or old-version entry: renamed aside first (atomic), then deleted."""
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _entry_name(doc_hash: str, mhash: str) -> str:
    return f"{doc_hash[:20]}-{mhash[:12]}"


def _read_meta(folder: Path) -> Optional[dict]:
    """An entry's meta when the entry is whole (this version, every file it lists), else None."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
        return None
    files = meta.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) and "/" not in f for f in files):
        return None
    if not all((folder / f).is_file() for f in [STATE_FILE, *files]):
        return None
    return meta


def lookup(doc_hash: str, mhash: str, root: Optional[Path] = None) -> Optional[CacheEntry]:
    folder = (root or cache_dir()) / _entry_name(doc_hash, mhash)
    meta = _read_meta(folder) if folder.is_dir() else None
    if meta is None or meta.get("doc_sha256") != doc_hash or meta.get("model_hash") != mhash:
        return None
    return CacheEntry(folder, meta)


class EntryWriter:
    """Writes an entry while the document streams: records go to disk as they come."""

    def __init__(self, doc_hash: str, mhash: str, root: Optional[Path] = None) -> None:
        self.root = root or cache_dir()
        self.doc_hash, self.mhash = doc_hash, mhash
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp = self.root / f".tmp-{_entry_name(doc_hash, mhash)}-{os.getpid()}-{time.time_ns()}"
        self.tmp.mkdir()
        self._open: dict[str, Any] = {}

    def add_record(self, name: str, record: dict) -> None:
        f = self._open.get(name)
        if f is None:
            f = self._open[name] = gzip.open(self.tmp / records_file(name), "wt", encoding="utf-8", compresslevel=6)
        f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")

    def _close_records(self) -> None:
        for f in self._open.values():
            f.close()

    def commit(self, state: "StreamState", json_files: dict[str, Any], info: dict) -> CacheEntry:
        """Write the state and the JSON files, then rename the whole entry into place."""
        from safetensors.torch import save_file

        self._close_records()
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.tensors().items()}
        for name, obj in json_files.items():
            with gzip.open(self.tmp / json_file(name), "wt", encoding="utf-8") as f:
                json.dump(obj, f, ensure_ascii=False)
        files = [records_file(n) for n in self._open] + [json_file(n) for n in json_files]
        meta = {"version": CACHE_VERSION, "doc_sha256": self.doc_hash, "model_hash": self.mhash,
                "tokens_seen": state.tokens_seen, "segments_written": state.segments_written,
                "created": time.time(), "last_used": time.time(), "files": files, **info}
        save_file(tensors, str(self.tmp / STATE_FILE))
        (self.tmp / META_FILE).write_text(json.dumps(meta))
        final = self.root / _entry_name(self.doc_hash, self.mhash)
        # Several processes (batch workers, on one machine or a shared filesystem) may write the
        # same entry at once. An entry is only ever renamed into place, never deleted or
        # rewritten under a reader: a complete one already there (the same document and model,
        # so the same contents) is kept, and a writer that loses the race drops its own copy.
        existing = lookup(self.doc_hash, self.mhash, self.root)
        if existing is None:
            _remove_stale(final, self.tmp.with_name(self.tmp.name + "-stale"))
            try:
                os.rename(self.tmp, final)  # atomic; fails when another writer's entry is there
                return CacheEntry(final, meta)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                existing = lookup(self.doc_hash, self.mhash, self.root)
                if existing is None:
                    raise
        self.abort()
        return existing

    def abort(self) -> None:
        try:
            self._close_records()
        except Exception:  # noqa: BLE001 - cleanup after another error
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def list_entries(root: Optional[Path] = None) -> list[CacheEntry]:
    root = root or cache_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            meta = _read_meta(folder)
            if meta is not None:
                out.append(CacheEntry(folder, meta))
    out.sort(key=lambda e: -float(e.meta.get("last_used", 0)))
    return out


def clear(root: Optional[Path] = None) -> tuple[int, int]:
    """Remove every entry (of any cache version) and leftovers of interrupted writes; returns
    (entries, bytes)."""
    root = root or cache_dir()
    if not root.is_dir():
        return 0, 0
    n = freed = 0
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        is_entry = (folder / META_FILE).is_file() and not folder.name.startswith(".")
        if is_entry or folder.name.startswith(".tmp-"):
            freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            shutil.rmtree(folder, ignore_errors=True)
            n += is_entry
    return n, freed
