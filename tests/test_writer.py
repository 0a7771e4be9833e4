"""A writer (a converted chat model) answers and summarizes from the reader's evidence."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from infini_cli.checkpoint import load_checkpoint
from infini_cli.cli import app
from infini_cli.gguf_convert import convert_gguf
from infini_cli.tasks.ask import ASK_INSTRUCTION, ASK_SHOTS, shots_prompt
from infini_cli.tasks.writer import NOT_IN_DOCUMENT, complete, fit_passages, is_writer, render_chat, write

from .gguf_factory import write_gguf
from .test_ask import document
from .test_convert import make_hf_llama

pytest.importorskip("transformers")
runner = CliRunner()


@pytest.fixture
def writer_path(tmp_path, tokenizer):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    out = tmp_path / "writer.safetensors"
    convert_gguf(write_gguf(tmp_path / "w.gguf", make_hf_llama(hf_dir, tokenizer, max_positions=512), tokenizer), out,
                 segment_len=512)
    return out


def test_chat_template_renders_in_a_sandbox(writer_path):
    w = load_checkpoint(writer_path)
    assert is_writer(w)
    text = render_chat(w, [{"role": "user", "content": "Hi {{ 7*7 }}"}])
    # message content is data: never evaluated as a template
    assert text == "<|im_start|>user\nHi {{ 7*7 }}<|im_end|>\n<|im_start|>assistant\n"
    w.header.metadata["chat"] = json.dumps({"template": "{{ ''.__class__.__mro__[1].__subclasses__() }}"})
    with pytest.raises(ValueError, match="chat template failed"):
        render_chat(w, [{"role": "user", "content": "x"}])


def test_write_is_bounded_by_the_window(writer_path):
    w = load_checkpoint(writer_path)
    out = write(w, [{"role": "user", "content": "The committee decided."}], 10)
    assert isinstance(out, str)
    with pytest.raises(ValueError, match="does not fit"):
        write(w, [{"role": "user", "content": "word " * 600}], 10)
    kept = fit_passages(w, ["short one.", "word " * 400, "never reached."], 60)
    assert kept == ["short one."]
    assert fit_passages(w, ["word " * 400], 60)[0].endswith("…")


def test_ask_with_a_writer_writes_from_the_evidence(tmp_path, writer_path):
    doc = tmp_path / "d.txt"
    doc.write_text(document())
    r = runner.invoke(app, ["ask", str(doc), "Who built the bridge?", "--model", str(writer_path), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["mode"] == "written" and data["writer"] == str(writer_path)
    # the reader (bundled model) read the document and found the evidence
    assert data["model"].endswith("infini-mini.safetensors")
    assert "Telford" in data["evidence"][0]["text"]


def test_ask_says_absent_without_writing_when_the_document_lacks_the_questions_words(tmp_path, writer_path,
                                                                                       monkeypatch):
    def never(*a, **k):
        raise AssertionError("the writer was asked")

    monkeypatch.setattr("infini_cli.tasks.ask.write_answer", never)
    doc = tmp_path / "d.txt"
    doc.write_text(document())
    r = runner.invoke(app, ["ask", str(doc), "Who painted the Mona Lisa?", "--model", str(writer_path), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["mode"] == "absent" and data["answer"] == "The document does not say." and not data["answered"]
    assert data["unmentioned"] == ["painted", "mona", "lisa"]


def test_summarize_with_a_writer_cites_where(tmp_path, writer_path):
    doc = tmp_path / "d.txt"
    doc.write_text(document(200, 100))
    r = runner.invoke(app, ["summarize", str(doc), "--words", "40", "--model", str(writer_path), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["mode"] == "written" and data["sections"]
    assert all("lines" in s and s["lines"][0] <= s["lines"][1] for s in data["sections"])
    firsts = [s["lines"][0] for s in data["sections"]]
    assert firsts == sorted(firsts)  # document order
    assert len(data["summary"].split()) <= 40 + 2 * len(data["sections"])


def test_the_writer_reads_a_second_hop_from_the_cache(tmp_path, writer_path, monkeypatch):
    """A cached document's sentences are read again for the names the evidence adds; the
    sentences found are reported beside the evidence (and a pipe, never cached, has none)."""
    monkeypatch.setenv("INFINI_CACHE_DIR", str(tmp_path / "cache"))
    doc = tmp_path / "d.txt"
    doc.write_text(document(answer_at=10) + "Daniel picked up the football.\nDaniel went back to the garden.\n")
    # a question that names no one, its best evidence without the place it asks for (wants_second_hop)
    r = runner.invoke(app, ["ask", str(doc), "Where is the football?", "--model", str(writer_path), "--json"])
    assert r.exit_code == 0, r.output
    hop = json.loads(r.output)["second_hop"]
    assert [h["text"] for h in hop] == ["Daniel went back to the garden."]
    r = runner.invoke(app, ["ask", "-", "Where is the football?", "--model", str(writer_path), "--json"],
                      input=doc.read_text())
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["second_hop"] == []


def test_a_writer_decodes_with_the_low_bit_kernels_and_a_reader_does_not(writer_path):
    import torch

    from infini_cli.loading import decode_kernels_for
    from infini_cli.quantize import int8_kernel_available
    from infini_cli.registry import PACKAGE_MODELS

    cpu = torch.device("cpu")
    assert decode_kernels_for(PACKAGE_MODELS / "infini-mini.safetensors", cpu) == "float"
    if not int8_kernel_available():
        pytest.skip("no weight-only int8 kernel in this torch")
    assert decode_kernels_for(writer_path, cpu) == "float"  # a float32 file keeps its weights
    int8 = writer_path.with_name("writer-int8.safetensors")
    r = runner.invoke(app, ["quantize", str(writer_path), str(int8), "--bits", "8"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert decode_kernels_for(int8, cpu) == "int4"
    assert decode_kernels_for(int8, torch.device("meta")) == "float"  # kernels are the CPU's


def test_a_section_may_finish_its_sentence_with_words_earlier_sections_left(writer_path, monkeypatch):
    """Each section is cut to its share of --words, plus what the sections before it left
    unused: a long sentence after a short section is kept whole instead of cut with " …",
    and the summary never exceeds the budget."""
    from infini_cli.tasks import summarize as summarize_task
    from infini_cli.tasks.passages import passages_of_text
    from infini_cli.tasks.summary_scoring import Budget

    long, last = " ".join(f"long{i}" for i in range(34)) + ".", " ".join(f"last{i}" for i in range(40)) + "."
    replies = iter(["Short one.", long, last])
    monkeypatch.setattr(summarize_task, "write", lambda *a, **k: next(replies))
    chosen = passages_of_text(document(30, 15))
    w = load_checkpoint(writer_path)
    monkeypatch.setattr(summarize_task, "sections_of", lambda writer, ch, n: [ch[:10], ch[10:20], ch[20:]])
    text, parts = summarize_task.write_summary(w, chosen, Budget(words=75))  # a share of 25 words
    assert [p["summary"] for p in parts[:2]] == ["Short one.", long]
    # 25 words + the 14 left over allow 39 of the last 40-word sentence: cut, and the summary
    # is exactly the budget
    assert parts[2]["summary"] == " ".join(last.split()[:39]) + " …"
    assert len(text.replace(" …", "").split()) == 75


def test_completing_one_line_keeps_the_first_line_with_text(writer_path, monkeypatch):
    """ask's worked-example prompt: the answer is the rest of its line; a leading line break or
    space is not shown, and what follows the line (the next example the model imagines) is dropped."""
    w = load_checkpoint(writer_path)
    ids = w.tokenizer.encode("\n Karl Weiss\nQuestion: Who else?")

    def scripted(*args, **kwargs):
        out = []
        for t in ids:
            out.append(t)
            yield t
            if kwargs["stop"](out):
                return

    monkeypatch.setattr("infini_cli.stream.generate", scripted)
    pieces: list[str] = []
    assert complete(w, "Question: Who finished the bridge?\nAnswer:", 20, pieces.append, one_line=True) == "Karl Weiss"
    assert "".join(pieces) == "Karl Weiss"
    assert complete(w, "x", 20, one_line=False).startswith("Karl Weiss\nQuestion")


def test_the_worked_examples_end_where_the_answer_starts():
    prompt = shots_prompt("Who built it?", ["First passage.", "Second one."])
    assert prompt.startswith(ASK_INSTRUCTION + "\n\n")
    for passage, question, answer in ASK_SHOTS:
        assert f"Passage: {passage}\nQuestion: {question}\nAnswer: {answer}\n\n" in prompt
    assert prompt.endswith("Passage: First passage. Second one.\nQuestion: Who built it?\nAnswer:")
    assert NOT_IN_DOCUMENT in ASK_INSTRUCTION  # the absent answer is named, not shown by an example


def test_in_a_small_window_the_examples_give_way_to_the_evidence(writer_path, monkeypatch):
    from infini_cli.tasks import ask as ask_task
    from infini_cli.tasks.passages import Passage

    w = load_checkpoint(writer_path)  # 512 tokens; the test tokenizer spends many on the examples
    seen = {}

    def capture(loaded, text, max_tokens, *args, **kwargs):
        seen["prompt"] = text
        return "Telford"

    monkeypatch.setattr(ask_task, "complete", capture)
    evidence = [Passage("Thomas Telford built the bridge in 1826.", 0, 0, None, 1, ["thoma", "telford", "built"])]
    assert ask_task.write_answer(w, evidence, "Who built the bridge?", prompt="shots") == "Telford"
    prompt = seen["prompt"]
    assert prompt.endswith("Passage: Thomas Telford built the bridge in 1826.\nQuestion: Who built the bridge?\nAnswer:")
    kept = sum(f"Answer: {a}\n" in prompt for _, _, a in ASK_SHOTS)
    assert kept < len(ASK_SHOTS)
    assert len(w.tokenizer.encode(prompt)) <= w.config.segment_len - min(ask_task.WRITER_ANSWER_TOKENS, 128)


def test_the_writer_reads_the_best_evidence_last_nearest_the_question(writer_path, monkeypatch):
    """writer_plan: with a second hop, the best WRITER_RANKED sentences, then the hop (most
    important first), written freely; write_answer shows them the other way round, so the best
    meets the question. Without one, the best alone, copied; "Who is X?" is never copied."""
    from infini_cli.tasks import ask as ask_task
    from infini_cli.tasks.passages import Passage

    def passage(text: str, index: int) -> Passage:
        return Passage(text, index, index, None, index + 1, ["x"])

    ranked = [passage(f"Ranked {i}.", 10 - i) for i in range(1, 6)]  # best first, late in the document
    hop = [passage("Hop one.", 20), passage("Hop two.", 1)]
    carried, went = passage("Daniel picked up the football.", 3), passage("Daniel went to the garden.", 4)
    assert ask_task.wants_second_hop("Where is the football?", carried)  # no place in it: one step on
    assert not ask_task.wants_second_hop("Where is the football?", went)  # the place is there
    assert not ask_task.wants_second_hop("Where is Mary?", carried)  # a question that names someone
    assert not ask_task.wants_second_hop("What did Daniel pick up?", carried)
    evidence, copy = ask_task.writer_plan("Where is the football?", ranked, hop)
    assert [p.text for p in evidence] == [p.text for p in ranked[:ask_task.WRITER_RANKED]] + ["Hop one.", "Hop two."]
    assert not copy
    assert ask_task.writer_plan("Where did Mary go?", ranked, []) == (ranked[:ask_task.WRITER_COPIED], True)
    assert ask_task.writer_plan("Who is Thomas Telford?", ranked, []) == (ranked[:ask_task.WRITER_RANKED], False)
    seen = {}
    monkeypatch.setattr(ask_task, "complete", lambda loaded, text, *a, **k: seen.setdefault("prompt", text))
    ask_task.write_answer(load_checkpoint(writer_path), evidence, "Who built the bridge?", prompt="shots")
    read = " ".join(p.text for p in evidence[::-1])
    assert seen["prompt"].endswith(f"Passage: {read}\nQuestion: Who built the bridge?\nAnswer:")
    assert read.endswith("Ranked 1.")


@pytest.mark.parametrize("question, prompt", [("Who is Thomas Telford?", "chat"), ("What was the Iron Bridge?", "chat"),
                                              ("Who built the bridge?", "shots"), ("When was it built?", "shots"),
                                              ("Who was the bridge's builder?", "shots"),
                                              ("What is north of the bridge?", "shots")])
def test_who_is_questions_are_asked_in_the_chat_template_others_with_examples(writer_path, monkeypatch, question,
                                                                              prompt):
    """Given the worked examples the writer answers "Who is X?" of a name X with a name; in
    its chat template it writes a sentence about X. Every other question gets the examples."""
    from infini_cli.tasks import ask as ask_task
    from infini_cli.tasks.passages import Passage

    used = []
    monkeypatch.setattr(ask_task, "complete", lambda *a, **k: used.append("shots") or "x")
    monkeypatch.setattr(ask_task, "write", lambda *a, **k: used.append("chat") or "x")
    evidence = [Passage("Thomas Telford, the engineer, built the bridge in 1826.", 0, 0, None, 1, ["telford"])]
    ask_task.write_answer(load_checkpoint(writer_path), evidence, question)
    assert used == [prompt]


def test_a_phrase_answer_drops_the_restated_question_as_it_streams_and_a_chat_answer_keeps_it(writer_path,
                                                                                             monkeypatch):
    from infini_cli.tasks import ask as ask_task
    from infini_cli.tasks.passages import Passage

    said = "The bridge was built by Thomas Telford."

    def scripted(loaded, text, max_tokens, on_text=None, *args, **kwargs):
        for word in said.split(" "):
            on_text(word if word == "The" else " " + word)
        return said

    monkeypatch.setattr(ask_task, "complete", scripted)
    monkeypatch.setattr(ask_task, "write", scripted)
    evidence = [Passage("Thomas Telford built the bridge in 1826.", 0, 0, None, 1, ["telford"])]
    w = load_checkpoint(writer_path)
    for question, expected in (("Who built the bridge?", "Thomas Telford."),  # shots: a phrase
                               ("Who is Thomas Telford?", said)):              # chat: a sentence about X
        shown: list[str] = []
        assert ask_task.write_answer(w, evidence, question, on_text=shown.append) == expected
        assert "".join(shown) == expected


def test_an_answer_that_only_echoes_the_question_is_asked_again_starting_otherwise(writer_path, monkeypatch):
    """"Yuan" to "What dynasty came before the Yuan?" is never shown: the writer is asked
    once more, its first token none that starts a word of the question or a stop word."""
    from infini_cli.tasks import ask as ask_task
    from infini_cli.tasks.passages import Passage

    calls = []

    def scripted(loaded, text, max_tokens, on_text=None, *args, avoid_first=(), **kwargs):
        said = "Song dynasty" if avoid_first else "the Yuan"
        calls.append(list(avoid_first))
        for piece in said.split(" "):
            on_text(piece + " ")
        return said

    monkeypatch.setattr(ask_task, "complete", scripted)
    w = load_checkpoint(writer_path)
    evidence = [Passage("The Song dynasty ruled before the Yuan.", 0, 0, None, 1, ["song"])]
    shown: list[str] = []
    question = "What dynasty came before the Yuan?"
    assert ask_task.write_answer(w, evidence, question, on_text=shown.append) == "Song dynasty"
    assert "".join(shown).strip() == "Song dynasty"
    assert calls[0] == [] and set(calls[1]) >= {w.tokenizer.encode(" Yuan")[0], w.tokenizer.encode(" the")[0]}
    calls.clear()
    assert ask_task.write_answer(w, evidence, "Which came first, the Song or the Yuan?") == "the Yuan"  # a choice
    assert len(calls) == 1


def test_an_open_question_is_written_section_by_section_from_the_focused_sentences(tmp_path, writer_path,
                                                                                    monkeypatch):
    """ "What happens to X?" gets a focused summary: the writer asked the question after each
    section's passages (in document order), each part citing its lines."""
    from infini_cli.tasks import summarize as summarize_task
    from .test_open_questions import story

    asked: list[str] = []
    real_write = summarize_task.write

    def spy(loaded, messages, *a, **k):
        asked.append(messages[-1]["content"])
        return real_write(loaded, messages, *a, **k)

    monkeypatch.setattr(summarize_task, "write", spy)
    doc = tmp_path / "story.txt"
    doc.write_text(story(6))
    r = runner.invoke(app, ["ask", str(doc), "What happens to Ellen Vance?", "--words", "60", "--model",
                            str(writer_path), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["mode"] == "written" and data["answer_kind"] == "open" and data["sections"]
    assert len(asked) == len(data["sections"]) >= 2
    share = 60 // len(asked)
    assert all(a.endswith(f"answer in at most {share} words: What happens to Ellen Vance?") for a in asked), asked
    firsts = [s["lines"][0] for s in data["sections"]]
    assert firsts == sorted(firsts)
    assert sum("Ellen" in e["text"] for e in data["evidence"]) >= 2


def test_a_copied_answer_is_a_phrase_of_the_evidence_word_for_word(writer_path):
    """copy: the tiny random writer, free, writes tokens from anywhere; copying, its answer
    is a span of the passage."""
    from infini_cli.tasks import ask as ask_task
    from infini_cli.tasks.passages import Passage

    w = load_checkpoint(writer_path)
    text = "Thomas Telford built the bridge over the river in 1826 for the new railway."
    evidence = [Passage(text, 0, 0, None, 1, ["thoma", "telford", "built"])]
    free = ask_task.write_answer(w, evidence, "Who built the bridge?", prompt="shots")
    assert free and free not in text  # the premise: free, it strays from the passage
    copied = ask_task.write_answer(w, evidence, "Who built the bridge?", prompt="shots", copy=True)
    assert copied and copied in text, copied


def test_an_answer_left_without_a_word_is_the_best_evidence_itself(writer_path, monkeypatch):
    from infini_cli.tasks import ask as ask_task
    from infini_cli.tasks.passages import Passage

    evidence = [Passage("Thomas Telford built the bridge in 1826.", 0, 0, None, 1, ["telford"]),
                Passage("The river ran past the mill.", 1, 1, None, 2, ["river"])]
    for left in ("", " .", "!\""):  # nothing, or punctuation alone
        monkeypatch.setattr(ask_task, "complete", lambda *a, left=left, **k: left)
        shown: list[str] = []
        answer = ask_task.write_answer(load_checkpoint(writer_path), evidence, "Who built the bridge?", shown.append,
                                       prompt="shots", copy=True)
        assert answer == "Thomas Telford built the bridge in 1826." and "".join(shown) == answer
