"""The bundled model's recipe in the model card: every config loads, and every stage starts from
a file an earlier command of the recipe writes (a broken chain would only show hours into a rerun)."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

from infini_cli.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def recipe_commands() -> list[list[str]]:
    card = (ROOT / "models" / "MODEL_CARD.md").read_text()
    section = card[card.index("## Training"):card.index("`--stop-at N`")]
    return [shlex.split(line.split("#")[0]) for line in section.splitlines() if line.startswith("    infini ")]


def test_every_recipe_config_loads():
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for path in sorted((ROOT / "models").glob("train_*.json")):
        settings = json.loads(path.read_text())
        assert set(settings) <= known, (path.name, set(settings) - known)
        TrainConfig(**settings)


def test_the_recipe_chains_and_ends_in_the_bundled_file():
    written: set[str] = set()
    commands = recipe_commands()
    assert [c[1] for c in commands].count("train") >= 1
    for cmd in commands:
        verb, args = cmd[1], cmd[2:]
        if verb == "train":
            cfg = json.loads((ROOT / args[args.index("--config") + 1]).read_text())
            if cfg.get("init_from"):
                assert cfg["init_from"] in written, (cmd, cfg["init_from"])
            written.add(f"{cfg['out_dir']}/model.safetensors")
        elif verb == "average":
            out = args[args.index("--out") + 1]
            sources = args[:args.index("--out")]
            assert len(sources) >= 2 and all(s in written for s in sources), cmd
            written.add(out)
        elif verb == "quantize":
            assert args[0] in written, cmd
            written.add(args[1])
        else:
            raise AssertionError(f"unexpected recipe command {cmd}")
    assert "models/infini-mini.safetensors" in written
