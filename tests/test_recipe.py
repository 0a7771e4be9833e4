"""The bundled models' recipes (models/recipes/*.json): every config loads, and every step
starts from a file an earlier step writes (a broken chain would only show hours into a rerun).
The model card shows the same commands; test_model_card_shows_the_recipe keeps them in step."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from infini_cli.training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "models" / "recipes").glob("*.json"))
# names a config may start from: the bundled checkpoints (resolved by infini_cli.registry)
BUNDLED = {p.stem for p in (ROOT / "infini_cli" / "models").glob("*.safetensors")}


def test_every_training_config_loads():
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for path in sorted((ROOT / "models").glob("train_*.json")):
        settings = json.loads(path.read_text())
        assert set(settings) <= known, (path.name, set(settings) - known)
        TrainConfig(**settings)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_the_recipe_chains_and_ends_in_its_file(recipe):
    r = json.loads(recipe.read_text())
    written: set[str] = set()
    for line in r["steps"]:
        cmd = shlex.split(line)
        verb, args = cmd[1], cmd[2:]
        if verb == "train":
            cfg = json.loads((ROOT / args[args.index("--config") + 1]).read_text())
            if cfg.get("init_from"):
                assert cfg["init_from"] in written | BUNDLED, (line, cfg["init_from"])
            written.add(f"{cfg['out_dir']}/model.safetensors")
            if "--export" in args:
                written.add(args[args.index("--export") + 1])
        elif verb == "average":
            out = args[args.index("--out") + 1]
            sources = args[:args.index("--out")]
            assert len(sources) >= 2 and all(s in written for s in sources), line
            written.add(out)
        elif verb == "quantize":
            assert args[0] in written, line
            written.add(args[1])
        else:
            raise AssertionError(f"unexpected recipe command {line}")
    assert r["output"] in written


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_model_card_shows_the_recipe(recipe):
    card = (ROOT / "models" / "MODEL_CARD.md").read_text()
    for line in json.loads(recipe.read_text())["steps"]:
        assert line in card, line
