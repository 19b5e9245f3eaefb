"""ResNeXt (Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", 2017)."""

from resnext.complexity import Complexity, count_complexity
from resnext.design import design_width
from resnext.forms import convert_form
from resnext.fuse import fuse_for_inference
from resnext.model import ResNeXt, build_model, create_model
from resnext.runtime import optimize_for_inference
from resnext.weights import load_weights, save_safetensors
from resnext.zoo import ModelSpec, get_spec, list_models, register_model

__all__ = [
    "Complexity",
    "ModelSpec",
    "ResNeXt",
    "build_model",
    "convert_form",
    "count_complexity",
    "create_model",
    "design_width",
    "fuse_for_inference",
    "get_spec",
    "list_models",
    "load_weights",
    "optimize_for_inference",
    "register_model",
    "save_safetensors",
]
__version__ = "0.1.0"
