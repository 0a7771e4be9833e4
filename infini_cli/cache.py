"""Read once, ask many: the document memory saved on disk, keyed by document and model.

An entry is a folder `<doc sha256[:20]>-<model hash[:12]>/` in the cache directory
($INFINI_CACHE_DIR, else $XDG_CACHE_HOME/infini, else ~/.cache/infini) holding:

- state.safetensors: the StreamState after the whole document (per layer M, z and the
  unfinished segment's keys and values) with metadata (document name, hashes, tokens, stats);
- sentences.jsonl.gz: every sentence with its page, line, offset and content terms, written
  as the document streams by (never held in memory as a whole);
- index.json.gz: the lexical statistics (document frequencies, term frequencies, names).

With these a second question, or a summary after a question, needs no model pass over the
document: its sentences are rescored from disk and the model starts from the saved memory.
Entries are written in a temporary folder and renamed into place, so a crash or Ctrl-C never
leaves a half entry that looks complete.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Union

import torch

if TYPE_CHECKING:
    from .checkpoint import LoadedModel
    from .memory import StreamState
    from .tasks.evidence import DocumentIndex, Passage

CACHE_VERSION = "1"
STATE_FILE, SENTENCES_FILE, INDEX_FILE = "state.safetensors", "sentences.jsonl.gz", "index.json.gz"


def cache_dir() -> Path:
    env = os.environ.get("INFINI_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "infini"


def file_sha256(path: Union[str, os.PathLike[str]], block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in blocks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(block)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def model_hash(path: Union[str, os.PathLike[str]]) -> str:
    """sha256 of the checkpoint's header (config, tokenizer, tensor layout and offsets) and size.

    The header names every tensor's dtype, shape and byte range, and the training record;
    with the size it tells checkpoints apart without hashing hundreds of MB of weights.
    """
    p = Path(path)
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(8)
        (n,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
        raw = f.read(min(n, 100 << 20))
    return hashlib.sha256(head + raw + str(size).encode()).hexdigest()


@dataclass
class CacheEntry:
    path: Path
    meta: dict

    @property
    def key(self) -> str:
        return self.path.name

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def load_state(self, loaded: "LoadedModel") -> "StreamState":
        from safetensors.torch import load_file

        from .memory import StreamState

        tensors = load_file(str(self.path / STATE_FILE), device="cpu")
        cfg = loaded.config
        n, d = cfg.n_kv_heads, cfg.head_dim
        for i in range(cfg.n_layers):
            want = {"M": (1, n, d, d), "z": (1, n, d)}
            for name, shape in want.items():
                t = tensors.get(f"{i}.{name}")
                if t is None or tuple(t.shape) != shape or not torch.isfinite(t).all():
                    raise ValueError(f"layer {i} {name} is missing, misshapen or not finite")
            for name in ("k_local", "v_local"):
                t = tensors.get(f"{i}.{name}")
                if t is None or t.dim() != 4 or tuple(t.shape[:2]) != (1, n) or t.shape[3] != d \
                        or t.shape[2] >= cfg.segment_len or not torch.isfinite(t).all():
                    raise ValueError(f"layer {i} {name} is missing, misshapen or not finite")
        st = StreamState.from_tensors(tensors, cfg.n_layers, int(self.meta["tokens_seen"]),
                                      int(self.meta["segments_written"]))
        st.k_local = [t.to(loaded.dtype) for t in st.k_local]
        st.v_local = [t.to(loaded.dtype) for t in st.v_local]
        return st.to(loaded.device)

    def load_index(self) -> "DocumentIndex":
        from .tasks.evidence import DocumentIndex

        with gzip.open(self.path / INDEX_FILE, "rt", encoding="utf-8") as f:
            return DocumentIndex.from_json(json.load(f))

    def passages(self) -> Iterator["Passage"]:
        """The document's sentences, streamed from disk one at a time."""
        from .tasks.evidence import Passage

        with gzip.open(self.path / SENTENCES_FILE, "rt", encoding="utf-8") as f:
            for line in f:
                yield Passage.from_record(json.loads(line))

    def check_passages(self) -> int:
        """Read the sentences file through once (a damaged one fails here, before any task
        has seen a sentence); returns how many there are."""
        return sum(1 for _ in self.passages())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def touch(self) -> None:
        self.meta["last_used"] = time.time()
        try:
            # another process (a batch worker) may be reading meta.json: it sees the old or the
            # new one, never a half-written file that would make the entry look invalid
            _write_atomic(self.path / "meta.json", json.dumps(self.meta))
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
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != CACHE_VERSION:
        return None
    if not all((folder / f).is_file() for f in (STATE_FILE, SENTENCES_FILE, INDEX_FILE)):
        return None
    return meta


def lookup(doc_hash: str, mhash: str, root: Optional[Path] = None) -> Optional[CacheEntry]:
    folder = (root or cache_dir()) / _entry_name(doc_hash, mhash)
    meta = _read_meta(folder) if folder.is_dir() else None
    if meta is None or meta.get("doc_sha256") != doc_hash or meta.get("model_hash") != mhash:
        return None
    return CacheEntry(folder, meta)


class EntryWriter:
    """Writes an entry while the document streams: sentences go to disk as they come."""

    def __init__(self, doc_hash: str, mhash: str, root: Optional[Path] = None) -> None:
        self.root = root or cache_dir()
        self.doc_hash, self.mhash = doc_hash, mhash
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp = self.root / f".tmp-{_entry_name(doc_hash, mhash)}-{os.getpid()}-{time.time_ns()}"
        self.tmp.mkdir()
        self._gz = gzip.open(self.tmp / SENTENCES_FILE, "wt", encoding="utf-8", compresslevel=6)

    def add(self, p: "Passage") -> None:
        self._gz.write(json.dumps(p.as_record(), ensure_ascii=False, separators=(",", ":")) + "\n")

    def commit(self, state: "StreamState", index: "DocumentIndex", info: dict) -> CacheEntry:
        from safetensors.torch import save_file

        self._gz.close()
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.tensors().items()}
        meta = {"version": CACHE_VERSION, "doc_sha256": self.doc_hash, "model_hash": self.mhash,
                "tokens_seen": state.tokens_seen, "segments_written": state.segments_written,
                "created": time.time(), "last_used": time.time(), **info}
        save_file(tensors, str(self.tmp / STATE_FILE), metadata={k: str(v) for k, v in meta.items()})
        with gzip.open(self.tmp / INDEX_FILE, "wt", encoding="utf-8") as f:
            json.dump(index.to_json(), f, ensure_ascii=False)
        (self.tmp / "meta.json").write_text(json.dumps(meta))
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
            self._gz.close()
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
    """Remove every entry (and leftovers of interrupted writes); returns (entries, bytes)."""
    root = root or cache_dir()
    if not root.is_dir():
        return 0, 0
    n = freed = 0
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        is_entry = _read_meta(folder) is not None
        if is_entry or folder.name.startswith(".tmp-"):
            freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            shutil.rmtree(folder, ignore_errors=True)
            n += is_entry
    return n, freed
