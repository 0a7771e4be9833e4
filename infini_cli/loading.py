"""Loading the models a command needs: one model, or a task's reader and writer.

Shared by the CLI and by anything that runs tasks outside it (batch workers), so that a
document is read and answered the same way wherever it is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:  # torch loads only when a model does
    from .checkpoint import LoadedModel


def load_model(model: Optional[Union[Path, str]], device: str = "auto", threads: Optional[int] = None,
               task: str = "passkey") -> LoadedModel:
    """A checkpoint by path or name (None: the task's default), on its device, with its threads."""
    from .checkpoint import load_checkpoint
    from .device import resolve_device, set_threads
    from .registry import default_model_for, resolve_model

    set_threads(threads)
    dev = resolve_device(device)
    path = resolve_model(Path(model)) if model is not None else default_model_for(task)
    loaded = load_checkpoint(path, dev, kernels=decode_kernels_for(path, dev))
    _default_threads_for(loaded, threads)
    return loaded


def _default_threads_for(loaded: LoadedModel, threads: Optional[int]) -> None:
    """Without --threads, the model's own count (device.default_threads) on the CPU."""
    if threads is None and loaded.device.type == "cpu":
        import torch

        from .device import default_threads

        torch.set_num_threads(default_threads(parameter_count(loaded)))


def decode_kernels_for(path: Path, dev) -> str:
    """A writer stored in int8 decodes with torch's weight-only kernels on the CPU: int4 where
    re-quantizing loses nothing (its weights came from a 4-bit GGUF), int8 elsewhere: about
    twice float32's decoding rate on the Intel Xeon of the README's speed table (two threads).
    Prompts are multiplied with weights made from the same codes (quantize.DEQUANTIZE_ROWS).
    Readers keep float32: they mostly ingest."""
    from .checkpoint import read_header
    from .quantize import int8_kernel_available

    header = read_header(path)
    if (dev.type == "cpu" and header.quant.bits == 8 and bool(header.chat.get("template"))
            and int8_kernel_available(dev)):
        return "int4"
    return "float"


def parameter_count(loaded: LoadedModel) -> int:
    """Weights of the model, int8 kernels' buffers included."""
    return sum(t.numel() for t in (*loaded.model.parameters(), *loaded.model.buffers()))


def load_for_task(model: Optional[Union[Path, str]], device: str, threads: Optional[int],
                  task: str) -> tuple[LoadedModel, Optional[LoadedModel]]:
    """(reader, writer) for ask or summarize.

    A writer (a converted chat model) does not read the document through its untrained
    memory; the bundled reader does, and picks the evidence the writer is given. Without a
    writer the task's model reads and answers alone (writer None).
    """
    from .tasks.writer import is_writer

    loaded = load_model(model, device, threads, task)
    if not is_writer(loaded):
        return loaded, None
    reader = load_model(None, device, threads, "read")
    if is_writer(reader):  # $INFINI_MODEL names the writer: the bundled reader reads
        from .registry import PACKAGE_MODELS

        reader = load_model(PACKAGE_MODELS / "infini-mini.safetensors", device, threads, "read")
    # the writer's count again (every free core; the reader's load set one): it writes last
    _default_threads_for(loaded, threads)
    from .decode_compiled import load_compiled

    loaded.compiled_decode = load_compiled(loaded.model)  # built by `infini pull`; else None: eager
    return reader, loaded
