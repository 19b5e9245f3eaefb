"""Weight sources that are not local files: URLs, torchvision's weight enums, timm's tags.

`fetch(source)` turns one into a local file, which `load_model` then reads like any other:

    https://host/name-1a2b3c4d.pth, file:///x.pt   downloaded once into torch.hub's cache
    torchvision:resnext50_32x4d[.IMAGENET1K_V2]     the URL of torchvision's weight enum
    timm:resnext50_32x4d.a1h_in1k                   timm's file, in the Hugging Face cache

With a model name known (`create_model(name, weights=...)`), "torchvision", "torchvision:TAG"
and "timm" name that model's weights (`expand_source`). Everything torchvision documents about
its weights (URL, categories, transforms, accuracy, file size) is read from its enums at run
time, never copied here, so a new torchvision release brings its new weights with it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import torch.hub

from resnext.extras import require

log = logging.getLogger(__name__)

URL_SCHEMES = ("http://", "https://", "file://")
_CHUNK = 1 << 20


class SourceError(ValueError):
    """A weight source that cannot be turned into a file (one line, exit status 2)."""


def is_remote(source: Any) -> bool:
    """True for the sources `fetch` handles (URLs, torchvision[:...], timm:...)."""
    if not isinstance(source, str):
        return False
    return source.startswith(URL_SCHEMES) or source.split(":", 1)[0] in ("torchvision", "timm")


def expand_source(source: Any, model_name: str) -> Any:
    """Name the model in a short source: "torchvision" -> "torchvision:NAME",
    "torchvision:IMAGENET1K_V2" -> "torchvision:NAME.IMAGENET1K_V2", "timm" -> "timm:NAME"."""
    if not isinstance(source, str):
        return source
    kind, _, rest = source.partition(":")
    if kind not in ("torchvision", "timm") or (rest and ("." in rest or rest == model_name)):
        return source
    if not rest:
        return f"{kind}:{model_name}"
    if kind == "torchvision" and not _torchvision_model(rest):
        return f"torchvision:{model_name}.{rest}"  # a tag, not a model name
    return source


def fetch(source: str) -> Path:
    """The local file of a URL, torchvision or timm source (downloaded if not yet cached)."""
    if source.startswith(URL_SCHEMES):
        return download(source)
    kind, _, rest = source.partition(":")
    if kind == "torchvision":
        return download(torchvision_weights(rest).url)
    return timm_file(rest)


def cache_dir() -> Path:
    """Where downloads go: torch.hub's checkpoint folder ($TORCH_HOME/hub/checkpoints), shared
    with torchvision, so weights either of them fetched are used by both without the network."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download(url: str) -> Path:
    """The cached file of `url`, downloaded if absent.

    A file name ending in `-<hex>` (torch.hub's HASH_REGEX) must match the SHA-256 of the
    download, as torch.hub checks. The download goes to a temporary file in the cache folder,
    renamed at the end: a failed, cut or refused download leaves nothing in the cache.
    """
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise SourceError(f"{url} names no file to download")
    folder = cache_dir()
    dst = folder / name
    if dst.is_file():
        return dst
    match = torch.hub.HASH_REGEX.search(name)
    prefix = match.group(1) if match else ""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder)
    except OSError as e:
        raise SourceError(f"cannot write the download cache {folder}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            digest = _copy(url, f, folder)
        if not digest.startswith(prefix):
            raise SourceError(
                f"{url}: the file's SHA-256 starts {digest[: len(prefix)]}, its name says "
                f"{prefix}; refusing it (nothing was cached)"
            )
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("downloaded %s to %s", url, dst)
    return dst


def _copy(url: str, f: Any, folder: Path) -> str:
    """Stream `url` into `f`; the SHA-256 hex digest. A body shorter than its Content-Length
    (a cut connection) is an error, never a short file."""
    offline = (
        f"; without a network, download it elsewhere and pass the local file instead "
        f"(or put it in {folder})"
    )
    digest = hashlib.sha256()
    received = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "resnext"})
        with urllib.request.urlopen(request, timeout=60) as response:
            expected = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
    except urllib.error.HTTPError as e:
        raise SourceError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        if received:
            raise SourceError(f"download of {url} broke off after {received} bytes ({e}); "
                              "nothing was cached, try again" + offline) from None  # fmt: skip
        reason = getattr(e, "reason", None) or e
        raise SourceError(f"cannot download {url} ({reason})" + offline) from None
    if expected is not None and received != int(expected):
        raise SourceError(
            f"download of {url} stopped at {received} of {expected} bytes; nothing was cached, "
            "try again" + offline
        )
    return digest.hexdigest()


def _torchvision_model(name: str) -> Any:
    """torchvision's weight enum for a model name, or None."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def torchvision_weights(source: str) -> Any:
    """The torchvision weight enum member a "MODEL[.TAG]" names (default: torchvision's DEFAULT)."""
    from resnext.models.zoo import list_models

    model, _, tag = source.partition(".")
    enum = _torchvision_model(model) if model in list_models() else None
    if enum is None:
        have = ", ".join(name for name in list_models() if _torchvision_model(name))
        what = f"{model!r} is no model torchvision has weights for" if model else "no model named"
        raise SourceError(
            f"torchvision:{source}: {what}; give torchvision:MODEL[.TAG] with MODEL one of {have}"
        )
    if not tag:
        return enum.DEFAULT
    tags = [w.name for w in enum] + ["DEFAULT"]
    if tag not in tags:
        raise SourceError(
            f"unknown torchvision weights {tag!r} for {model}; known tags: {', '.join(tags)}"
        )
    return enum[tag] if tag != "DEFAULT" else enum.DEFAULT


def timm_file(name: str) -> Path:
    """timm's weight file for "MODEL[.TAG]" from the Hugging Face hub (its cache if present)."""
    timm = require("timm", "timm", "loading timm weights")
    hub = require("huggingface_hub", "timm", "loading timm weights")
    try:
        cfg = timm.get_pretrained_cfg(name) if name else None
    except (RuntimeError, ValueError):  # timm's answer to a tag its model does not have
        cfg = None
    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        base = name.split(".")[0]
        known = ", ".join(timm.list_pretrained(f"{base}.*")) or "none"
        raise SourceError(f"unknown timm weights {name!r}; known tags for {base}: {known}")
    files = ("model.safetensors", "pytorch_model.bin")
    for filename in files:  # the cache first: no network needed, none asked
        cached = hub.try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return Path(cached)
    folder = hf_cache_dir() / f"models--{repo.replace('/', '--')}"
    offline = (
        f"; without a network, fill {folder} elsewhere (`hf download {repo}` with HF_HOME "
        "set, then copy the folder) or pass the weight file's local path"
    )
    why = _hub_unreachable()
    if why:
        raise SourceError(
            f"cannot download timm:{name} from the Hugging Face hub ({why})" + offline
        )
    errors = []
    for filename in files:
        try:
            return Path(hub.hf_hub_download(repo, filename))
        except Exception as e:  # hub errors have many types: missing file, no network, auth
            errors.append(f"{filename}: {type(e).__name__}")
    raise SourceError(
        f"cannot download timm:{name} from the Hugging Face hub ({repo}: {'; '.join(errors)})"
        + offline
    )


def hf_cache_dir() -> Path:
    """Where timm's downloads go: the Hugging Face hub's cache ($HF_HUB_CACHE, by default
    $HF_HOME/hub, ~/.cache/huggingface/hub), not torch.hub's."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_unreachable(seconds: float = 5.0) -> str:
    """Why the hub cannot be reached, or "": HF_HUB_OFFLINE, or no connection to its host
    within `seconds`. The hub's client retries a refused connection with back-off for about
    a minute (22 warnings); this answers in seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlparse(constants.ENDPOINT)
    if urllib.request.getproxies().get(url.scheme):
        return ""  # through a proxy: only the client can tell
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=seconds).close()
    except OSError as e:
        return f"{url.hostname}:{port} cannot be reached: {e.strerror or e}"
    return ""


def weight_sets(model: str | None = None) -> list[dict[str, Any]]:
    """Every published weight set for our registered models (or one), without the network:
    torchvision's from its enums, timm's from its pretrained configs when timm is installed.

    Each row: model, source (what `--init`/`--checkpoint`/`weights=` take), tag, top1 (ImageNet-1K
    acc@1 as documented, or None), size_mb, licence (None where the source states none).
    """
    from resnext.models.zoo import get_spec, list_models

    names = list_models()
    if model is not None:
        get_spec(model)  # an unknown name raises, with close matches
        names = [model]
    rows = []
    for name in names:
        for w in _torchvision_model(name) or ():
            rows.append({
                "model": name,
                "source": f"torchvision:{name}.{w.name}",
                "tag": w.name + (" (DEFAULT)" if w is type(w).DEFAULT else ""),
                "top1": w.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
                "size_mb": w.meta.get("_file_size"),
                "licence": None,  # torchvision states none per weight set
            })  # fmt: skip
        rows.extend(_timm_rows(name))
    return rows


def _timm_rows(name: str) -> list[dict[str, Any]]:
    try:
        import timm
    except ImportError:
        return []
    rows = []
    for full in timm.list_pretrained(f"{name}.*"):
        cfg = timm.get_pretrained_cfg(full)
        rows.append({
            "model": name,
            "source": f"timm:{full}",
            "tag": full.partition(".")[2],
            "top1": None,  # timm publishes accuracy in its results tables, not in the config
            "size_mb": None,
            "licence": getattr(cfg, "license", None),
        })  # fmt: skip
    return rows
