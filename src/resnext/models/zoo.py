"""ModelSpec and the one table of named variants (paper Tables 1, 3, 4, 7 and the usual baselines)."""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, get_args

from resnext.models.blocks import Form, Shortcut, bottleneck_width

Template = Literal["imagenet", "cifar"]
BlockKind = Literal["basic", "bottleneck"]

# Stage widths ("planes") double at every downsampling: rule 2 of section 3.1.
BASE_PLANES = 64


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines a network; `ResNeXt(spec)` builds it.

    Args:
        template: "imagenet" (7x7/2 stem + max pool, four stages; Table 1) or "cifar"
            (3x3 stem of 64 filters, three stages at 32/16/8; Appendix A).
        block: "bottleneck" (ResNet-50 and up, all ResNeXts) or "basic" (ResNet-18/34).
        depths: blocks per stage.
        cardinality: C, the number of paths in each block.
        base_width: d, the width of each path in the first stage (doubles with each stage).
        num_classes: outputs of the classifier.
        in_channels: input image channels.
        form: "a", "b" or "c" of Figure 3; "c" (grouped conv) is the fast one.
        shortcut: "A" zero-padded identity, "B" projection where shapes change, "C" always.
        stride_in_1x1: put the stride on the first 1x1 conv instead of the 3x3 (the paper: 3x3).
        zero_init_residual: start every block's last BN gamma at zero.
        residual: False removes the shortcuts (the "plain" ablation of section 5.1).
        base_planes: stem width and planes of the first stage (64 in the paper); smaller
            values give narrow networks of the same shape, e.g. for CPU studies.
    """

    template: Template = "imagenet"
    block: BlockKind = "bottleneck"
    depths: tuple[int, ...] = (3, 4, 6, 3)
    cardinality: int = 1
    base_width: int = 64
    num_classes: int = 1000
    in_channels: int = 3
    form: Form = "c"
    shortcut: Shortcut = "B"
    stride_in_1x1: bool = False
    zero_init_residual: bool = False
    residual: bool = True
    base_planes: int = BASE_PLANES

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(self.depths))
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        stages = 4 if self.template == "imagenet" else 3
        if len(self.depths) != stages or min(self.depths) < 1:
            raise ValueError(f"the {self.template} template needs {stages} positive stage depths")
        for name in ("cardinality", "base_width", "num_classes", "in_channels", "base_planes"):
            if getattr(self, name) < (0 if name == "num_classes" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.block == "basic" and (self.cardinality, self.base_width, self.form) != (1, 64, "c"):
            raise ValueError("basic blocks support only cardinality=1, base_width=64, form='c'")
        if bottleneck_width(self.base_planes, self.base_width, 1) == 0:
            raise ValueError(
                f"base_width={self.base_width} with base_planes={self.base_planes} gives "
                "zero-width paths: int(base_planes * base_width / 64) must be at least 1"
            )

    @property
    def planes(self) -> tuple[int, ...]:
        """Per-stage planes; the block output is planes * expansion."""
        return tuple(self.base_planes * 2**i for i in range(len(self.depths)))

    @property
    def depth(self) -> int:
        """Weighted layers, counted as the paper does (ResNeXt-50, ResNeXt-29, ...)."""
        return (3 if self.block == "bottleneck" else 2) * sum(self.depths) + 2

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `ModelSpec(**d)` rebuilds it."""
        d = asdict(self)
        d["depths"] = list(self.depths)
        return d


_TYPES = {"int": int, "bool": bool}


def _check_type(name: str, value: Any, annotation: Any) -> None:
    choices = {
        "Template": Template,
        "BlockKind": BlockKind,
        "Form": Form,
        "Shortcut": Shortcut,
    }.get(annotation)
    if choices is not None:
        if value not in get_args(choices):
            raise ValueError(f"{name} must be one of {get_args(choices)}, got {value!r}")
    elif annotation in _TYPES:
        expected = _TYPES[annotation]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f"{name} must be {annotation}, got {value!r}")
    elif name == "depths" and not all(isinstance(v, int) for v in value):
        raise ValueError(f"depths must be integers, got {value!r}")


# Depth -> (template, block, blocks per stage).
_TEMPLATES: dict[int, tuple[Template, BlockKind, tuple[int, ...]]] = {
    18: ("imagenet", "basic", (2, 2, 2, 2)),
    34: ("imagenet", "basic", (3, 4, 6, 3)),
    50: ("imagenet", "bottleneck", (3, 4, 6, 3)),
    101: ("imagenet", "bottleneck", (3, 4, 23, 3)),
    152: ("imagenet", "bottleneck", (3, 8, 36, 3)),
    200: ("imagenet", "bottleneck", (3, 24, 36, 3)),
    29: ("cifar", "bottleneck", (3, 3, 3)),
    11: ("cifar", "bottleneck", (1, 1, 1)),
}

# The table: name -> (depth, cardinality C, bottleneck width d).
_TABLE: dict[str, tuple[int, int, int]] = {
    # ResNet baselines (d = 64, C = 1).
    "resnet18": (18, 1, 64),
    "resnet34": (34, 1, 64),
    "resnet50": (50, 1, 64),
    "resnet101": (101, 1, 64),
    "resnet152": (152, 1, 64),
    "resnet200": (200, 1, 64),
    # Table 1 / Table 5 models.
    "resnext50_32x4d": (50, 32, 4),
    "resnext101_32x4d": (101, 32, 4),
    "resnext101_64x4d": (101, 64, 4),
    "resnext101_32x8d": (101, 32, 8),
    "resnext152_32x4d": (152, 32, 4),
    # Table 3: cardinality at preserved complexity (Table 2 widths).
    "resnext50_2x40d": (50, 2, 40),
    "resnext50_4x24d": (50, 4, 24),
    "resnext50_8x14d": (50, 8, 14),
    "resnext101_2x40d": (101, 2, 40),
    "resnext101_4x24d": (101, 4, 24),
    "resnext101_8x14d": (101, 8, 14),
    # Table 4: 2x the complexity of ResNet-101, by width or by cardinality.
    "resnext101_2x64d": (101, 2, 64),
    "resnet101_1x100d": (101, 1, 100),
    # torchvision's wide ResNets (twice the bottleneck width).
    "wide_resnet50_2": (50, 1, 128),
    "wide_resnet101_2": (101, 1, 128),
    # CIFAR (Table 7, Figure 7): ResNeXt-29 with d = 64.
    "resnext29_1x64d": (29, 1, 64),
    "resnext29_2x64d": (29, 2, 64),
    "resnext29_4x64d": (29, 4, 64),
    "resnext29_8x64d": (29, 8, 64),
    "resnext29_16x64d": (29, 16, 64),
    # One block per stage: the `digits` training recipe's CPU-sized model.
    "resnext11_4x16d": (11, 4, 16),
}

# Fields a name fixes; overriding one of them with another value contradicts the name.
ARCH_FIELDS = ("template", "block", "depths", "cardinality", "base_width", "base_planes")


def default_input_size(spec: ModelSpec) -> int:
    """The side of the images a template is designed for: 224 (ImageNet), 32 (CIFAR)."""
    return 224 if spec.template == "imagenet" else 32


def _row_spec(depth: int, cardinality: int, base_width: int) -> ModelSpec:
    template, block, depths = _TEMPLATES[depth]
    num_classes = 1000 if template == "imagenet" else 10
    return ModelSpec(template, block, depths, cardinality, base_width, num_classes)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, spec: ModelSpec) -> None:
    """Add a named variant; a name can be registered once."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = spec


for _name, _row in _TABLE.items():
    register_model(_name, _row_spec(*_row))


def list_models() -> list[str]:
    """Names of all registered variants, in table order."""
    return list(_REGISTRY)


# Names outside the table (the studies' members): depth, C and d, optionally narrow planes.
_NAME = re.compile(r"^resnext(?P<depth>\d+)_(?P<c>\d+)x(?P<d>\d+)d(?:_p(?P<planes>\d+))?$")


def parse_name(name: str) -> ModelSpec | None:
    """`resnext{depth}_{C}x{d}d[_p{planes}]` as a spec, or None if the name does not parse.

    Depths of the table's templates are understood, and any CIFAR depth 9n + 2 (n blocks per
    stage, Appendix A), so a study can build e.g. `resnext11_8x12d_p16` without registering it.
    """
    m = _NAME.match(name)
    if m is None:
        return None
    depth, planes = int(m["depth"]), int(m["planes"] or BASE_PLANES)
    if depth in _TEMPLATES and _TEMPLATES[depth][1] == "bottleneck":
        template, block, depths = _TEMPLATES[depth]
    elif depth > 2 and (depth - 2) % 9 == 0:
        template, block, depths = "cifar", "bottleneck", ((depth - 2) // 9,) * 3
    else:
        return None
    classes = 1000 if template == "imagenet" else 10
    return ModelSpec(template, block, depths, int(m["c"]), int(m["d"]), classes, base_planes=planes)


def model_name(spec: ModelSpec) -> str:
    """The parseable name of a bottleneck spec (the inverse of `parse_name`)."""
    planes = "" if spec.base_planes == BASE_PLANES else f"_p{spec.base_planes}"
    return f"resnext{spec.depth}_{spec.cardinality}x{spec.base_width}d{planes}"


def get_spec(name: str, **overrides: Any) -> ModelSpec:
    """The spec of a named variant with options overridden; contradicting the name raises."""
    if name not in _REGISTRY and parse_name(name) is not None:
        return _override(name, parse_name(name), overrides)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; see `resnext info` for the list")
    return _override(name, _REGISTRY[name], overrides)


def _override(name: str, spec: ModelSpec, overrides: dict[str, Any]) -> ModelSpec:
    known = {f.name for f in fields(ModelSpec)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; options are {sorted(known)}")
    for key in ARCH_FIELDS:
        if key in overrides:
            value = tuple(overrides[key]) if key == "depths" else overrides[key]
            if value != getattr(spec, key):
                raise ValueError(
                    f"{name} fixes {key}={getattr(spec, key)!r}, got {key}={overrides[key]!r}; "
                    "build a ModelSpec for another design"
                )
    return replace(spec, **overrides)
