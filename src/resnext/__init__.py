"""ResNeXt (Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", 2017)."""

from resnext import interrupt

if interrupt.is_command():  # before torch is imported: Ctrl-C there is one line, exit 130
    interrupt.end_quietly_on_interrupt()

# ruff: noqa: E402  (the imports below come after that, on purpose)

from resnext.data.preprocessing import Preprocessing
from resnext.files.loader import load_model
from resnext.files.model_file import read_model_file, save_safetensors
from resnext.files.pretrained import create_model, fpn_backbone
from resnext.files.weights import load_weights
from resnext.inference.backends import optimize_for_inference
from resnext.models.complexity import Complexity, count_complexity
from resnext.models.design import design_width
from resnext.models.forms import convert_form
from resnext.models.fuse import fuse_for_inference
from resnext.models.model import ResNeXt, build_model
from resnext.models.zoo import ModelSpec, get_spec, list_models, register_model

__all__ = [
    "Complexity",
    "ModelSpec",
    "Preprocessing",
    "ResNeXt",
    "build_model",
    "convert_form",
    "count_complexity",
    "create_model",
    "design_width",
    "fpn_backbone",
    "fuse_for_inference",
    "get_spec",
    "list_models",
    "load_model",
    "load_weights",
    "optimize_for_inference",
    "read_model_file",
    "register_model",
    "save_safetensors",
]
__version__ = "0.1.0"
