"""A converted writer (SmolLM2-135M-Instruct, ...) writing from what is put in its window.

The writer is prompted in its own chat template, kept in the checkpoint's metadata as the
GGUF carried it, rendered in a sandboxed Jinja environment (a template is data from a file:
it may format messages, never reach Python). Its memory gates start local-only, so it reads
nothing but its window: the reader model streams the document and picks the evidence, the
writer reads the evidence (README, "Which model reads and which writes").
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from ..checkpoint import LoadedModel
from ..memory import StreamState

if TYPE_CHECKING:
    import torch

    from ..stream import CopySpans

NOT_IN_DOCUMENT = "The document does not say."


def is_writer(loaded: LoadedModel) -> bool:
    """A model converted with a chat template: it writes, but its memory is not trained."""
    return bool(loaded.header.chat.get("template"))


def render_chat(loaded: LoadedModel, messages: list[dict[str, str]]) -> str:
    """The conversation in the model's chat template, ending where the assistant speaks."""
    chat = loaded.header.chat
    template = chat.get("template")
    if not template:
        body = "\n\n".join(m["content"] for m in messages)
        return body + "\nAnswer:"
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=True,
            bos_token=chat.get("bos_token") or "", eos_token=chat.get("eos_token") or "")
    except TemplateError as e:
        raise ValueError(f"{loaded.header.path}: its chat template failed ({e})") from None


def fit_passages(loaded: LoadedModel, texts: list[str], budget_tokens: int) -> list[str]:
    """The longest prefix of texts (best first) whose tokens fit the budget; a passage that
    alone is too long is cut at a word boundary."""
    tok = loaded.tokenizer
    kept: list[str] = []
    used = 0
    for t in texts:
        n = len(tok.encode(t)) + 4
        if used + n > budget_tokens:
            if not kept:
                words = t.split()
                while words and len(tok.encode(" ".join(words))) + 4 > budget_tokens:
                    words = words[: len(words) * 3 // 4]
                if words:
                    kept.append(" ".join(words) + " …")
            break
        kept.append(t)
        used += n
    return kept


def _repeats(ids: list[int], n: int = 8) -> bool:
    """The last n tokens already occurred: a small writer caught in a loop."""
    if len(ids) < 2 * n:
        return False
    tail = ids[-n:]
    return any(ids[i:i + n] == tail for i in range(len(ids) - 2 * n + 1))


def copy_bias(loaded: LoadedModel, sources: list[str], strength: float) -> Optional["torch.Tensor"]:
    """A logit bias towards the tokens of the sources (0: none): a small writer then copies
    names and numbers from its evidence instead of inventing them."""
    if not strength or not sources:
        return None
    import torch

    ids = {t for text in sources for t in loaded.tokenizer.encode(" " + text)}
    ids |= {t for text in sources for t in loaded.tokenizer.encode(text)}
    bias = torch.zeros(loaded.config.vocab_size)
    bias[list(ids)] = strength
    return bias


def copy_spans(loaded: LoadedModel, texts: Sequence[str]) -> "CopySpans":
    """The constraint that keeps a continuation a span of one of the texts (each as it reads
    after a space, as an answer after "Answer:" starts), ended by the end of text or a new line
    once it holds a letter or a digit."""
    from ..stream import CopySpans

    tok = loaded.tokenizer
    ends = {t for nl in ("\n", "\n\n") if len(ids := tok.encode(nl)) == 1 for t in ids}
    if tok.eos_id is not None:
        ends.add(tok.eos_id)
    sources = [tok.encode(" " + t) for t in texts]
    content = {t for src in sources for t in src if re.search(r"\w", tok.decode([t]))}
    return CopySpans(sources, ends, content)


def write(loaded: LoadedModel, messages: list[dict[str, str]], max_tokens: int,
          on_text: Optional[Callable[[str], None]] = None, sources: Optional[list[str]] = None,
          bias: float = 0.0, no_repeat_ngram: int = 0) -> str:
    """The writer's reply to a conversation in its chat template (complete)."""
    return complete(loaded, render_chat(loaded, messages), max_tokens, on_text, sources, bias, no_repeat_ngram)


def complete(loaded: LoadedModel, prompt_text: str, max_tokens: int, on_text: Optional[Callable[[str], None]] = None,
             sources: Optional[list[str]] = None, bias: float = 0.0, no_repeat_ngram: int = 0,
             one_line: bool = False, avoid_first: Sequence[int] = (), copy_from: Sequence[str] = ()) -> str:
    """Greedy continuation of `prompt_text` in a fresh stream; streamed to on_text as it is decided.

    sources, bias: lean towards the tokens of these texts (see copy_bias); no_repeat_ngram:
    no n-gram of the answer twice (stream.NgramBan); one_line: the continuation ends at the
    end of its first line that holds any text; avoid_first: tokens it may not start with;
    copy_from: texts the continuation must be a span of, word for word (copy_spans)."""
    from ..stream import generate

    tok = loaded.tokenizer
    prompt = tok.encode(prompt_text)
    # local attention spans one segment; the writer's memory is not trained, so the prompt
    # and the answer must share one (callers budget their passages with fit_passages)
    room = loaded.config.segment_len - max_tokens
    if len(prompt) > room:
        raise ValueError(f"the writer's prompt ({len(prompt)} tokens) does not fit its window ({room})")
    state = StreamState.empty(loaded.config, device=loaded.device)
    ids: list[int] = []
    shown = ""
    logit_bias = copy_bias(loaded, sources or [], bias)
    if logit_bias is not None and tok.eos_id is not None:
        logit_bias[tok.eos_id] = bias  # ending is always allowed as much as copying
    line_ended = (lambda out: "\n" in tok.decode(out).strip()) if one_line else (lambda out: False)
    for t in generate(loaded.model, state, prompt, max_tokens, logit_bias=logit_bias, no_repeat_ngram=no_repeat_ngram,
                      compiled=loaded.compiled_decode, first_ban=avoid_first,
                      copy=copy_spans(loaded, copy_from) if copy_from else None,
                      stop=lambda out: out[-1] == tok.eos_id or _repeats(out) or line_ended(out)):
        if t == tok.eos_id:
            break
        ids.append(t)
        if _repeats(ids):
            break
        text = tok.decode(ids).lstrip()  # what leads the answer's first word is never shown
        ended = one_line and "\n" in text
        if ended:
            text = text.split("\n")[0]
        # hold back a trailing replacement character: a multi-byte letter split across tokens
        if text.endswith("\ufffd") and not ended:
            continue
        if on_text is not None and len(text) > len(shown):
            on_text(text[len(shown):])
        shown = text
        if ended:
            break
    return shown.strip()
