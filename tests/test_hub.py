"""torch.hub: every registered model has an entry point; weights from a file or a URL."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from resnext import create_model, list_models, save_safetensors

REPO = str(Path(__file__).resolve().parents[1])


def test_every_registered_model_has_an_entry_point():
    spec = importlib.util.spec_from_file_location("hubconf", Path(REPO) / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert all(callable(getattr(hubconf, name, None)) for name in list_models())
    assert "torch" in hubconf.dependencies


def test_hub_load_random_and_from_file_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the URL's download cache
    model = torch.hub.load(REPO, "resnext11_4x16d", source="local", trust_repo=True)
    assert model.spec.cardinality == 4 and model.spec.num_classes == 10
    src = create_model("resnext11_4x16d", num_classes=5, form="b").eval()
    path = save_safetensors(tmp_path / "w.safetensors", src.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = src(x)
    for weights in (str(path), path.as_uri()):
        got = torch.hub.load(REPO, "resnext11_4x16d", source="local", weights=weights).eval()
        assert got.spec.num_classes == 5  # the file's classifier size
        with torch.no_grad():
            assert (got(x) - want).abs().max() <= 1e-5
    assert (tmp_path / "torch" / "hub" / "checkpoints" / "w.safetensors").is_file()


def test_hub_weights_take_any_model_file_and_carry_its_preprocessing(tmp_path):
    from resnext import Preprocessing
    from resnext.files.checkpoint import save_checkpoint

    src = create_model("resnext11_4x16d", num_classes=3).eval()
    pre = Preprocessing(36, 32, "bicubic")
    payload = {
        "model": src.state_dict(),
        "spec": src.spec.to_dict(),
        "class_names": ["a", "b", "c"],
    }
    path = save_checkpoint(tmp_path / "best.pt", payload | {"preprocessing": pre.to_dict()})
    got = torch.hub.load(REPO, "resnext11_4x16d", source="local", weights=str(path), form="a")
    assert got.preprocessing == pre and got.class_names == ["a", "b", "c"] and got.spec.form == "a"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (got(x) - src(x)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="not resnext50_32x4d"):
        torch.hub.load(REPO, "resnext50_32x4d", source="local", weights=str(path))
