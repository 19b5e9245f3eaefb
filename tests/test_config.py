"""Recipes carry the paper's numbers; overrides are typed and validated; configs round-trip."""

import json
import re

import pytest

from resnext.training.config import RECIPES, config_from_dict, resolve_config, save_config
from resnext.training.fields import parse_set


def test_imagenet_recipe_is_section_4():
    c = RECIPES["imagenet"]
    assert (c.optimizer, c.momentum, c.nesterov, c.weight_decay) == ("sgd", 0.9, True, 1e-4)
    assert (c.batch_size, c.lr, c.lr_batch, c.epochs) == (256, 0.1, 256, 100)
    assert (c.schedule, c.milestones, c.gamma) == ("step", (30, 60, 90), 0.1)
    assert (c.augment, c.train_size, c.color_jitter, c.lighting, c.hflip) == (
        "inception",
        224,
        0.4,
        0.1,
        True,
    )
    assert (c.eval_resize, c.eval_crop) == (256, 224)


def test_cifar_recipe_is_appendix_a():
    c = RECIPES["cifar"]
    assert (c.batch_size, c.lr, c.weight_decay, c.momentum, c.epochs) == (128, 0.1, 5e-4, 0.9, 300)
    assert (c.milestones, c.pad, c.train_size, c.hflip) == ((150, 225), 4, 32, True)


def test_overrides_are_parsed_by_field_type():
    c = resolve_config(
        "cifar",
        parse_set(["lr=0.2", "milestones=1,2", "nesterov=yes", "precision=bf16", "mean=0,1,2"]),
    )
    assert (c.lr, c.milestones, c.nesterov, c.precision) == (0.2, (1, 2), True, "bf16")
    assert c.mean == (0.0, 1.0, 2.0)
    assert resolve_config("digits", {"epochs": 3, "lr": 1}).lr == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lrr": "1"}, "unknown config key 'lrr' (did you mean lr?)"),
        ({"epochs": "1.5"}, "epochs expects int"),
        ({"nesterov": "maybe"}, "nesterov expects bool"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"batch_size": "0"}, "batch_size must be positive"),
        ({"batch_size": "10", "accum_steps": "3"}, "not a multiple of accum_steps"),
        ({"epochs": True}, "epochs expects int"),
    ],
)
def test_bad_overrides_raise(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_config("digits", overrides)


def test_unknown_recipe_and_bad_set():
    with pytest.raises(ValueError, match="unknown recipe"):
        resolve_config("imagenet22k")
    with pytest.raises(ValueError, match="key=value"):
        parse_set(["lr"])


def test_config_round_trips_through_json(tmp_path):
    c = resolve_config("imagenet", {"data": "/x", "milestones": "2,4"})
    save_config(c, tmp_path / "config.json")
    assert config_from_dict(json.loads((tmp_path / "config.json").read_text())) == c


def test_a_shorter_schedule_scales_the_recipes_milestones():
    """The paper's 150 and 225 of 300 epochs are 0.5 and 0.75 of the run."""
    assert resolve_config("cifar", {"epochs": 20}).milestones == (10, 15)
    assert resolve_config("cifar", {"epochs": "2"}).milestones == (1, 1)
    assert resolve_config("cifar", {"epochs": 1}).milestones == ()  # no epoch to decay at
    assert resolve_config("imagenet", {"epochs": 10}).milestones == (3, 6, 9)
    assert resolve_config("cifar").milestones == (150, 225)
    explicit = resolve_config("cifar", {"epochs": 20, "milestones": "5"})
    assert explicit.milestones == (5,)
    with pytest.raises(ValueError, match="milestones 150, 225 are not before the last epoch"):
        resolve_config("cifar", {"epochs": 2, "milestones": "150,225"})
    assert resolve_config("cifar", {"epochs": 2, "milestones": "9", "schedule": "cosine"})
