"""Weight sources: URL downloads into torch.hub's cache, torchvision tags, timm tags, listing.

Nothing here reaches the network: URLs point at a server on 127.0.0.1 that the test starts,
torchvision's weights come from a pre-filled torch.hub cache, and `urlopen` is made to fail
where a test asserts that the cache is used without the network.
"""

from __future__ import annotations

import hashlib
import http.server
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision

import resnext
from resnext.cli import main
from resnext.files import sources
from resnext.files.model_file import read_model_file


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch.hub directory; returns its checkpoints folder."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path.removeprefix("/cut"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/cut/"):  # half the body, then the connection drops
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests = {}, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def hashed_file(folder: Path, model: torch.nn.Module, stem: str) -> Path:
    """A torchvision-format state_dict saved as `stem-<first 10 hex of its sha256>.pth`."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(model.state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return tmp.rename(folder / f"{stem}-{digest[:10]}.pth")


@pytest.fixture
def weights_file(tmp_path) -> Path:
    return hashed_file(tmp_path / "files", resnext.create_model("resnext11_4x16d"), "rx11")


def test_url_is_downloaded_once_checked_and_loaded(hub, server, weights_file, monkeypatch):
    server.files["/w/" + weights_file.name] = weights_file.read_bytes()
    url = f"{server.url}/w/{weights_file.name}"
    model = resnext.create_model("resnext11_4x16d", weights=url)
    assert (hub / weights_file.name).read_bytes() == weights_file.read_bytes()
    assert list(hub.iterdir()) == [hub / weights_file.name]  # no temporary left
    want = read_model_file(weights_file)
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    assert model.training  # as create_model without weights
    again = resnext.load_model(url)  # the resolver hook: the same sources everywhere
    assert torch.equal(again.fc.weight, model.fc.weight)
    assert server.requests == ["/w/" + weights_file.name]  # the second time from the cache


def test_a_hash_mismatch_is_refused_and_nothing_cached(hub, server, weights_file):
    bad = weights_file.name.rsplit("-", 1)[0] + "-0123456789.pth"
    server.files["/" + bad] = weights_file.read_bytes()
    true = hashlib.sha256(weights_file.read_bytes()).hexdigest()[:10]
    with pytest.raises(ValueError, match=f"starts {true}, its name says 0123456789"):
        resnext.create_model("resnext11_4x16d", weights=f"{server.url}/{bad}")
    assert not any(hub.iterdir())


def test_a_download_cut_half_way_leaves_no_file(hub, server, weights_file, capsys):
    server.files["/" + weights_file.name] = weights_file.read_bytes()
    url = f"{server.url}/cut/{weights_file.name}"
    assert main(["evaluate", "--checkpoint", url, "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnext: error: download of " + url in err
    assert "nothing was cached" in err
    assert not any(hub.iterdir())


def test_an_unreachable_url_names_it_and_the_way_out(hub, capsys):
    with socket_port() as port:
        url = f"http://127.0.0.1:{port}/rx11-abcdef12.pth"
    assert main(["train", "--recipe", "tiny", "--init", url, "--out", str(hub / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot download {url}" in err
    assert "pass the local file" in err
    assert not (hub / "run").exists() and not any(hub.iterdir())


def socket_port():
    """A port nothing listens on (bound, then closed)."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def port():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        number = s.getsockname()[1]
        s.close()
        yield number

    return port()


def test_file_url_is_copied_into_the_cache(hub, weights_file):
    model = resnext.create_model("resnext11_4x16d", weights=weights_file.as_uri())
    assert (hub / weights_file.name).is_file()
    assert model.spec.cardinality == 4


def test_torchvision_tag_comes_from_the_enum_and_the_cache(hub, no_network):
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    hub.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), hub / w.url.rsplit("/", 1)[1])
    model = resnext.create_model("resnet18", weights="torchvision:IMAGENET1K_V1")
    t = w.transforms()
    pre = model.preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == (
        t.resize_size[0],
        t.crop_size[0],
        "bilinear",
    )
    assert list(pre.mean) == pytest.approx(t.mean) and model.class_names == w.meta["categories"]
    same = resnext.create_model("resnet18", weights="torchvision")  # DEFAULT is V1 here
    assert torch.equal(same.conv1.weight, model.conv1.weight)
    new = resnext.create_model("resnet18", weights="torchvision", num_classes=3)
    assert new.fc.out_features == 3 and new.class_names is None
    assert torch.equal(new.layer4[1].conv2.weight, model.layer4[1].conv2.weight)


def test_torchvision_v2_weights_carry_their_own_preprocessing(hub, monkeypatch):
    w = torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V2
    asked = []

    def fake_download(url):  # the real code path up to the network: the enum's own URL
        asked.append(url)
        path = hub / url.rsplit("/", 1)[1]
        torch.save(torchvision.models.resnext50_32x4d().state_dict(), path)
        return path

    hub.mkdir(parents=True)
    monkeypatch.setattr(sources, "download", fake_download)
    model = resnext.create_model("resnext50_32x4d", weights="torchvision:IMAGENET1K_V2")
    assert asked == [w.url]
    pre = model.preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == (232, 224, "bilinear")


def test_unknown_tags_and_models_list_the_known_ones(hub, no_network, capsys):
    with pytest.raises(ValueError, match="known tags: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"):
        resnext.create_model("resnext50_32x4d", weights="torchvision:IMAGENET1K_V3")
    with pytest.raises(ValueError, match="resnext50_32x4d"):
        resnext.load_model("torchvision:resnext29_8x64d")
    assert main(["evaluate", "--checkpoint", "torchvision:resnet18.V7", "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "known tags: IMAGENET1K_V1, DEFAULT" in err


def test_weights_for_another_architecture_name_the_keys(hub, weights_file, capsys):
    with pytest.raises(ValueError, match="holds a resnext11_4x16d model, not resnet18: .*missing"):
        resnext.create_model("resnet18", weights=str(weights_file))


def test_weights_lists_torchvision_sets_without_the_network(no_network, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # timm absent: torchvision's sets only
    assert main(["weights", "resnext50_32x4d"]) == 0
    out = capsys.readouterr().out
    w = torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V2
    acc = w.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    row = f"| resnext50_32x4d | torchvision:resnext50_32x4d.IMAGENET1K_V2 (default) | {acc:.2f} |"
    assert row in out and f"{w.meta['_file_size']:.1f}" in out and "timm:" not in out


def test_timm_missing_is_a_one_line_hint(hub, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)
    args = ["evaluate", "--checkpoint", "timm:resnext50_32x4d.a1h_in1k", "--dataset", "digits"]
    assert main(args) == 2
    err = capsys.readouterr().err
    hint = "loading timm weights needs the 'timm' extra: pip install 'resnext[timm]'"
    assert err == f"resnext: error: {hint}\n"


def test_timm_tag_goes_through_the_hub_cache_folder(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    hf = pytest.importorskip("huggingface_hub")
    got = []

    def fake_hub_download(repo, filename):
        got.append((repo, filename))
        folder = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(resnext.create_model("resnext50_32x4d_p16").state_dict(), folder / "x.bin")
        return str(folder / "x.bin")

    monkeypatch.setattr(hf, "hf_hub_download", fake_hub_download)
    monkeypatch.setattr(sources, "_hub_unreachable", lambda: "")  # the fake hub is reachable
    path = sources.fetch("timm:resnext50_32x4d.a1h_in1k")
    assert got == [("timm/resnext50_32x4d.a1h_in1k", "model.safetensors")]
    assert "models--timm--resnext50_32x4d.a1h_in1k" in str(path)
    with pytest.raises(ValueError, match="known tags for resnext50_32x4d: .*a1h_in1k"):
        sources.fetch("timm:resnext50_32x4d.nosuch")
