"""Training: runs on a tiny model, resumes exactly, keeps gates learning, exports a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from infini_cli.checkpoint import load_checkpoint
from infini_cli.cli import app
from infini_cli.training.train import TrainConfig, build_optimizer, lr_at, train
from infini_cli.model import InfiniTransformer
from infini_cli.config import preset


def tiny_run(tmp_path, books, steps, name="run"):
    return TrainConfig(out_dir=str(tmp_path / name), data_dir=str(books), preset="tiny", steps=steps, seed=3,
                       batch_text=2, text_segments=2, batch_passkey=2, passkey_segments=2, warmup=2,
                       amplify_start=1, amplify_ramp=2, eval_every=1000, save_every=1, threads=1)


def params(path):
    return load_checkpoint(path).model.state_dict()


@pytest.mark.slow
def test_resume_gives_the_same_model_as_an_unbroken_run(tmp_path, books):
    whole = train(tiny_run(tmp_path, books, 4, "whole"), log=lambda s: None)
    train(tiny_run(tmp_path, books, 2, "split"), log=lambda s: None)
    resumed = train(tiny_run(tmp_path, books, 4, "split"), log=lambda s: None)
    a, b = params(whole), params(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    log = [json.loads(x) for x in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_gates_get_their_own_rate_and_no_decay():
    model = InfiniTransformer(preset("tiny"))
    cfg = TrainConfig(lr=1e-3, gate_lr_mult=10.0)
    opt = build_optimizer(model, cfg)
    gate_group = [g for g in opt.param_groups if any(p is model.layers[0].attn.gate for p in g["params"])][0]
    assert gate_group["weight_decay"] == 0.0 and gate_group["lr_mult"] == 10.0
    assert lr_at(0, cfg) < lr_at(cfg.warmup, cfg)


def test_train_command_exports_int8(tmp_path, books):
    cfg = tiny_run(tmp_path, books, 2, "cli")
    settings = {k: v for k, v in cfg.__dict__.items() if k not in ("threads",)}
    (tmp_path / "cfg.json").write_text(json.dumps(settings))
    out = tmp_path / "exported.safetensors"
    r = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "cfg.json"), "--export", str(out), "--threads", "1"])
    assert r.exit_code == 0, r.output
    loaded = load_checkpoint(out)
    assert loaded.header.quant.bits == 8 and loaded.header.training["steps"] == 2


def test_missing_data_folder_is_a_clean_error(tmp_path):
    r = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "nowhere" in r.output and "Traceback" not in r.output


def test_multi_query_prompts_ask_again_and_every_target_is_the_key(tokenizer, books):
    import random

    from infini_cli.tasks.passkey_prompt import QUESTION
    from infini_cli.training.train import PasskeySampler
    from tests.conftest import tiny_config

    cfg = TrainConfig(batch_passkey=4, passkey_segments=16, multi_query_prob=1.0, book_haystack_prob=0.5)
    sampler = PasskeySampler(cfg, tiny_config(tokenizer), tokenizer, [str(p) for p in books.glob("*.txt")])
    toks, weights, pos, tgt, lengths = sampler.batch(random.Random(0), step=0)
    assert toks.shape[1] % 16 == 0 and weights.shape == (4, toks.shape[1] // 16)
    q = tokenizer.encode(QUESTION)
    groups = pos.view(-1, sampler.answer_len, 2)
    assert len(groups) > 4  # several questions per prompt
    for g, t in zip(groups, tgt.view(-1, sampler.answer_len)):
        b, first = int(g[0, 0]), int(g[0, 1])
        # teacher forcing: the target at p is the token at p + 1, right after the question
        assert toks[b, g[:, 1] + 1].tolist() == t.tolist()
        assert toks[b, first - len(q) + 1:first + 1].tolist() == q
        answer = tokenizer.decode(t.tolist())
        key = answer.strip().rstrip(".")
        assert answer == f" {key}." and key.isdigit() and len(key) == 5  # the full stop ends the key
        assert key in tokenizer.decode(toks[b, :first].tolist())
        assert first + sampler.answer_len <= int(lengths[b])


def test_straddling_answers_cross_a_segment_boundary_after_the_question(tokenizer, books):
    import random

    from infini_cli.tasks.passkey_prompt import QUESTION
    from infini_cli.training.train import PasskeySampler
    from tests.conftest import tiny_config

    mcfg = tiny_config(tokenizer)
    S = mcfg.segment_len
    cfg = TrainConfig(batch_passkey=8, passkey_segments=12, answer_cross_prob=1.0, book_haystack_prob=0.5)
    sampler = PasskeySampler(cfg, mcfg, tokenizer, [str(p) for p in books.glob("*.txt")])
    toks, weights, pos, tgt, lengths = sampler.batch(random.Random(1), step=0)
    q = tokenizer.encode(QUESTION)
    splits = set()
    for g, t in zip(pos.view(-1, sampler.answer_len, 2), tgt.view(-1, sampler.answer_len)):
        b, first = int(g[0, 0]), int(g[0, 1])
        assert toks[b, g[:, 1] + 1].tolist() == t.tolist()
        assert toks[b, first - len(q) + 1:first + 1].tolist() == q  # the question is intact
        key = tokenizer.decode(t.tolist()).strip().rstrip(".")
        assert key.isdigit() and key in tokenizer.decode(toks[b, :first].tolist())
        # answer tokens sit at first+1 .. first+len: a boundary falls strictly inside them
        boundary = next(p for p in range(first + 2, first + 1 + sampler.answer_len) if p % S == 0)
        splits.add(boundary - first - 1)
    assert len(splits) > 1  # the split point varies


def test_prompt_length_grows_over_the_curriculum(tokenizer, books):
    from infini_cli.training.train import PasskeySampler
    from tests.conftest import tiny_config

    cfg = TrainConfig(passkey_segments=8, passkey_segments_start=2, length_ramp=100)
    sampler = PasskeySampler(cfg, tiny_config(tokenizer), tokenizer, [str(books / "book0.txt")])
    assert [sampler.max_segments(s) for s in (0, 50, 100, 1000)] == [2, 5, 8, 8]


def test_a_new_stage_starts_from_a_checkpoint_with_gates_optionally_reset(tmp_path, books):
    first = train(tiny_run(tmp_path, books, 2, "stage1"), log=lambda s: None)
    for reset in (False, True):
        cfg = tiny_run(tmp_path, books, 0, f"stage2-{reset}")
        cfg.init_from, cfg.reset_gates = str(first), reset
        second = train(cfg, log=lambda s: None)
        a, b = params(first), params(second)
        for k in a:
            if reset and k.endswith("gate"):
                assert torch.all(b[k] == preset("tiny").gate_init)
            else:
                torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_copy_task_targets_are_digits_said_before(tokenizer, books):
    import random

    from infini_cli.training.train import PasskeySampler
    from tests.conftest import tiny_config

    cfg = TrainConfig(batch_copy=3, copy_segments=8, copy_local_start=1.0, copy_local_end=0.0, copy_local_ramp=10)
    sampler = PasskeySampler(cfg, tiny_config(tokenizer, segment_len=48), tokenizer,
                             [str(p) for p in books.glob("*.txt")])
    toks, pos, tgt = sampler.copy_batch(random.Random(1), step=0)
    assert toks.shape == (3, 384) and len(tgt) > 0
    # at the start of the curriculum both copies of a string share a segment
    for (b, p) in pos.tolist():
        seg = toks[b, (p // 48) * 48:p].tolist()
        assert any(seg[i:i + 2] == [toks[b, p].item(), toks[b, p + 1].item()] for i in range(len(seg) - 1))
    for (b, p), t in zip(pos.tolist(), tgt.tolist()):
        assert toks[b, p + 1].item() == t and tokenizer.decode([t]).isdigit()
        # the digit and the one before it appeared in the same order earlier in the sequence
        earlier = toks[b, :p].tolist()
        assert any(earlier[i:i + 2] == [toks[b, p].item(), t] for i in range(len(earlier) - 1))


def test_a_run_with_every_task_trains(tmp_path, books):
    cfg = tiny_run(tmp_path, books, 2, "all")
    cfg.batch_copy, cfg.multi_query_prob, cfg.passkey_lm_weight = 2, 0.5, 0.3
    train(cfg, log=lambda s: None)
    rows = [json.loads(x) for x in (tmp_path / "all" / "log.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["copy_acc"] <= 1.0 for r in rows)


@pytest.mark.slow
def test_stop_at_ends_early_without_changing_the_schedule(tmp_path, books):
    whole = train(tiny_run(tmp_path, books, 4, "whole"), log=lambda s: None)
    cfg = tiny_run(tmp_path, books, 4, "staged")
    cfg.stop_at = 3
    train(cfg, log=lambda s: None)
    rows = [json.loads(x) for x in (tmp_path / "staged" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    cfg.stop_at = None
    resumed = train(cfg, log=lambda s: None)
    a, b = params(whole), params(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_distractor_numbers_go_into_the_haystack_not_the_key(tokenizer, books, monkeypatch):
    import random
    import re

    from infini_cli.training.train import PasskeySampler
    from tests.conftest import tiny_config

    def haystack_numbers(**knob):
        cfg = TrainConfig(batch_passkey=8, passkey_segments=64, multi_query_prob=0.0, book_haystack_prob=1.0,
                          **knob)
        sampler = PasskeySampler(cfg, tiny_config(tokenizer), tokenizer, [str(p) for p in books.glob("*.txt")])
        toks, _, pos, tgt, lengths = sampler.batch(random.Random(3), step=0)
        found = 0
        for g, t in zip(pos.view(-1, sampler.answer_len, 2), tgt.view(-1, sampler.answer_len)):
            b, first = int(g[0, 0]), int(g[0, 1])
            key = tokenizer.decode(t.tolist()).strip().rstrip(".")
            prompt = tokenizer.decode(toks[b, :first + 1].tolist())
            assert prompt.count(key) == 2  # the key line says it twice; the answer is still the key
            found += len(re.findall(r"\d+", prompt.replace(key, "")))
        return found

    assert haystack_numbers() == 0
    assert haystack_numbers(haystack_numbers_prob=1.0) > 0
    assert haystack_numbers(haystack_phrases_prob=1.0) > 0
    # near misses are rare (0.5-3% of sentences) and these prompts short: denser, to see them arrive
    import infini_cli.training.train as train_module
    from infini_cli.training.number_distractors import sprinkle_near_misses
    monkeypatch.setattr(train_module, "sprinkle_near_misses", lambda s, rng, rate: sprinkle_near_misses(s, rng, 0.5))
    assert haystack_numbers(haystack_near_miss_prob=1.0) > 0


def test_a_state_saved_under_other_settings_is_refused_not_resumed(tmp_path, books):
    cfg = tiny_run(tmp_path, books, 4, "shared")
    cfg.stop_at = 2
    train(cfg, log=lambda s: None)
    other = tiny_run(tmp_path, books, 4, "shared")
    other.seed, other.lr = 4, 1e-3
    with pytest.raises(ValueError, match=r"train_state.safetensors: saved by a run with other settings "
                                         r"\(seed 3 -> 4; lr 0.002 -> 0.001\)"):
        train(other, log=lambda s: None)
    # run control may change on resume: threads, eval cadence, where to stop
    same = tiny_run(tmp_path, books, 4, "shared")
    same.threads, same.eval_every = None, 500
    logs = []
    train(same, log=logs.append)
    assert logs[0].startswith("resumed from") and logs[0].endswith("at step 2")


def test_train_command_refuses_a_mismatched_state_with_exit_2(tmp_path, books):
    cfg = tiny_run(tmp_path, books, 2, "cli")
    train(cfg, log=lambda s: None)
    settings = json.loads(cfg.to_json())
    settings["seed"] = 9
    (tmp_path / "other.json").write_text(json.dumps(settings))
    r = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "other.json")])
    assert r.exit_code == 2
    assert "seed 3 -> 9" in r.output and "use a new out_dir" in r.output
