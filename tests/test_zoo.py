"""The table of named variants and the validation of overrides."""

from __future__ import annotations

import pytest

from resnext import ModelSpec, create_model, get_spec, list_models, register_model

REQUIRED = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200",
    "resnext50_32x4d", "resnext101_32x4d", "resnext101_64x4d", "resnext101_32x8d",
    "resnext152_32x4d", "resnext50_2x40d", "resnext50_4x24d", "resnext50_8x14d",
    "resnext101_2x40d", "resnext101_4x24d", "resnext101_8x14d", "resnext101_2x64d",
    "resnet101_1x100d", "wide_resnet50_2", "wide_resnet101_2", "resnext29_1x64d",
    "resnext29_2x64d", "resnext29_4x64d", "resnext29_8x64d", "resnext29_16x64d",
]  # fmt: skip


def test_required_variants_are_registered() -> None:
    assert set(REQUIRED) <= set(list_models())


@pytest.mark.parametrize(
    "name, depth, cardinality, d",
    [("resnext50_32x4d", 50, 32, 4), ("resnext101_8x14d", 101, 8, 14), ("resnet152", 152, 1, 64),
     ("resnext29_16x64d", 29, 16, 64), ("resnet18", 18, 1, 64), ("resnet101_1x100d", 101, 1, 100),
     ("resnet200", 200, 1, 64), ("wide_resnet50_2", 50, 1, 128)],
)  # fmt: skip
def test_names_match_their_specs(name: str, depth: int, cardinality: int, d: int) -> None:
    spec = get_spec(name)
    assert (spec.depth, spec.cardinality, spec.base_width) == (depth, cardinality, d)


def test_override_contradicting_the_name_raises() -> None:
    with pytest.raises(ValueError, match="resnext50_32x4d fixes cardinality=32"):
        create_model("resnext50_32x4d", cardinality=8)
    with pytest.raises(ValueError, match="fixes depths"):
        get_spec("resnext29_8x64d", depths=(1, 1, 1))


def test_consistent_and_free_overrides_are_accepted() -> None:
    spec = get_spec("resnext50_32x4d", cardinality=32, base_width=4, num_classes=10, form="b")
    assert (spec.cardinality, spec.num_classes, spec.form) == (32, 10, "b")


@pytest.mark.parametrize(
    "overrides, message",
    [({"form": "d"}, "form must be one of"), ({"shortcut": "X"}, "shortcut must be one of"),
     ({"num_classes": "10"}, "num_classes must be int"), ({"zero_init_residual": 1}, "must be bool"),
     ({"colour": 1}, "unknown model option"), ({"num_classes": -1}, "must be positive")],
)  # fmt: skip
def test_bad_overrides_raise(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_spec("resnext50_32x4d", **overrides)


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match="did you mean resnext50_32x4d"):
        get_spec("resnext50_32x4")


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="needs 4 positive stage depths"):
        ModelSpec(depths=(3, 4, 6))
    with pytest.raises(ValueError, match="basic blocks"):
        ModelSpec(block="basic", cardinality=2)
    with pytest.raises(ValueError, match="base_width must be positive"):
        ModelSpec(cardinality=1, base_width=0)
    with pytest.raises(ValueError, match="zero-width paths"):
        ModelSpec(cardinality=4, base_width=3, base_planes=16)


def test_registry_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet50", get_spec("resnet50"))


def test_spec_round_trips_through_a_dict() -> None:
    spec = get_spec("resnext101_32x8d", form="a", shortcut="C")
    assert ModelSpec(**spec.to_dict()) == spec
