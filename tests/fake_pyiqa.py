"""A small stand-in for pyiqa (IQA-PyTorch 0.1.16), injected into ``sys.modules`` by the tests.

It mimics exactly the surface kdiqa's ``pyiqa`` teacher relies on, so the suite runs without pyiqa
(PolyForm Noncommercial, heavy dependencies) and without network:

- ``pyiqa.create_metric(name, as_loss=False, device=None, **opts)`` → an ``InferenceModel``-like module
  with ``.net``, ``.lower_better``, ``.score_range``, ``.metric_mode``, a ``dummy_param`` giving the
  device, and a forward that asserts inputs in [0, 1] and returns ``(B, 1)`` scores;
- ``pyiqa.list_models(metric_mode=None)``, ``pyiqa.default_model_configs.DEFAULT_CONFIGS``;
- ``pyiqa.utils.download_util``: ``DEFAULT_CACHE_DIR`` and ``load_file_from_url``, which uses a file
  already at ``<model_dir or DEFAULT_CACHE_DIR>/<basename>`` and otherwise calls the module's
  ``download_url_to_file`` (both looked up at call time, as in pyiqa);
- architectures listing their released checkpoints in a module-level ``default_model_urls`` and
  loading them through a ``load_pretrained_network`` like pyiqa's (which reads any pickle; this fake
  reads only tensors, ``weights_only=True``: the tests' files are plain state dicts);
- architectures that fetch a backbone through ``torch.hub.load_state_dict_from_url``, open a URL
  with ``urllib`` or connect a socket themselves while they are built.
"""
from __future__ import annotations

import os
import socket
import sys
import types
import urllib.request
from urllib.parse import urlparse

import torch
from torch import nn

HF = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
default_model_urls = {"koniq": HF + "FakeCNN_koniq-0123abcd.pth"}
BACKBONE_URL = "https://download.pytorch.org/models/fakenet-4567ef01.pth"
SOCKET_URL = "http://fake-weights.invalid/clip/model.bin"

DEFAULT_CONFIGS = {
    "fakecnn": {"metric_opts": {"type": "FakeCNN", "pretrained": "koniq"}, "metric_mode": "NR", "score_range": "~0, ~1"},
    "fakecnn-lower": {"metric_opts": {"type": "FakeCNN", "pretrained": None, "scale": 10.0}, "metric_mode": "NR",
                      "lower_better": True, "score_range": "0, 10"},
    "fakenorange": {"metric_opts": {"type": "FakeCNN", "pretrained": None}, "metric_mode": "NR", "score_range": "~0, ~"},
    "fakebackbone": {"metric_opts": {"type": "FakeBackbone"}, "metric_mode": "NR", "score_range": "~0, ~1"},
    "fakeurl": {"metric_opts": {"type": "FakeSocket", "fetch": "urllib"}, "metric_mode": "NR", "score_range": "~0, ~1"},
    "fakesocket": {"metric_opts": {"type": "FakeSocket", "fetch": "socket"}, "metric_mode": "NR", "score_range": "~0, ~1"},
    "fakefr": {"metric_opts": {"type": "FakeCNN", "pretrained": None}, "metric_mode": "FR", "score_range": "0, 1"},
}


def load_file_from_url(url, model_dir=None, progress=True, file_name=None):
    """pyiqa's: the cached file if present, else ``download_url_to_file`` into the cache folder."""
    module = sys.modules["pyiqa.utils.download_util"]
    model_dir = model_dir or module.DEFAULT_CACHE_DIR
    os.makedirs(model_dir, exist_ok=True)
    cached = os.path.abspath(os.path.join(model_dir, file_name or os.path.basename(urlparse(url).path)))
    if not os.path.exists(cached):
        module.download_url_to_file(url, cached, hash_prefix=None, progress=progress)
    return cached


def load_pretrained_network(net, model_path, strict=True, weight_keys="params"):
    if model_path.startswith(("https://", "http://")):
        model_path = load_file_from_url(model_path)
    state = torch.load(model_path, map_location=torch.device("cpu"), weights_only=True)
    net.load_state_dict(state[weight_keys] if weight_keys else state, strict=strict)


def _download_should_not_run(url, dst, *args, **kwargs):  # pragma: no cover - kdiqa's guard replaces it
    raise AssertionError(f"the fake pyiqa was asked to download {url}")


class FakeCNN(nn.Module):
    """A CNNIQA-sized toy: conv body, pooled, linear head; score ≈ scale · sigmoid(...)."""

    def __init__(self, pretrained="koniq", pretrained_model_path=None, width=4, scale=1.0):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.head = nn.Linear(width, 1)
        self.scale = scale
        if pretrained_model_path is not None:
            load_pretrained_network(self, pretrained_model_path, True, "params")
        elif pretrained is not None:
            load_pretrained_network(self, default_model_urls[pretrained], True, "params")

    def forward(self, x):
        fmap = self.body(x)
        return self.scale * torch.sigmoid(self.head(fmap.mean((2, 3))) + 4 * (x - 0.5).mean((1, 2, 3), keepdim=True).squeeze(-1).squeeze(-1))


class FakeBackbone(FakeCNN):
    """Loads an ImageNet-style backbone through torch.hub while it is built (like DBCNN's VGG-16)."""

    def __init__(self, backbone_pretrain=True, **kwargs):
        super().__init__(pretrained=None, **kwargs)
        if backbone_pretrain:
            self.body.load_state_dict(torch.hub.load_state_dict_from_url(BACKBONE_URL, map_location="cpu"))


class FakeSocket(FakeCNN):
    """Fetches a file itself while it is built: with urllib (like pyiqa's CLIP loader) or a raw socket."""

    def __init__(self, fetch="urllib", **kwargs):
        super().__init__(pretrained=None, **kwargs)
        if fetch == "urllib":
            urllib.request.urlopen(SOCKET_URL, timeout=1)
        elif fetch == "socket":
            socket.create_connection((urlparse(SOCKET_URL).hostname, 80), timeout=1)


class _Registry:
    def __init__(self):
        self._items = {}

    def register(self, cls):
        self._items[cls.__name__] = cls
        return cls

    def get(self, name):
        return self._items[name]

    def __contains__(self, name):
        return name in self._items


ARCH_REGISTRY = _Registry()
for _cls in (FakeCNN, FakeBackbone, FakeSocket):
    ARCH_REGISTRY.register(_cls)


class InferenceModel(nn.Module):
    def __init__(self, metric_name, as_loss=False, device=None, **kwargs):
        super().__init__()
        cfg = DEFAULT_CONFIGS[metric_name]
        self.metric_name = metric_name
        self.lower_better = cfg.get("lower_better", False)
        self.metric_mode = cfg["metric_mode"]
        self.score_range = cfg.get("score_range")
        self.as_loss = as_loss
        opts = dict(cfg["metric_opts"])
        opts.update(kwargs)
        self.device = device or torch.device("cpu")
        self.net = ARCH_REGISTRY.get(opts.pop("type"))(**opts).to(self.device).eval()
        self.dummy_param = torch.nn.Parameter(torch.empty(0)).to(self.device)
        self.calls = 0

    def forward(self, target, ref=None):
        self.calls += 1
        assert target.min() > -1e-6 and target.max() < 1 + 1e-6, "Input must be normalized to [0, 1]"
        with torch.set_grad_enabled(self.as_loss):
            return self.net(target.to(self.dummy_param.device))


def create_metric(metric_name, as_loss=False, device=None, **kwargs):
    assert metric_name in DEFAULT_CONFIGS, f"Metric {metric_name} not implemented yet."
    return InferenceModel(metric_name, as_loss=as_loss, device=device, **kwargs)


def list_models(metric_mode=None, filter="", exclude_filters=""):
    return sorted(k for k, v in DEFAULT_CONFIGS.items() if metric_mode is None or v["metric_mode"] == metric_mode)


def install(monkeypatch, cache_dir) -> types.ModuleType:
    """Put the fake pyiqa into ``sys.modules`` (undone by ``monkeypatch``); its cache folder is ``cache_dir``."""
    pyiqa = types.ModuleType("pyiqa")
    pyiqa.__version__ = "0.1.16-fake"
    pyiqa.create_metric = create_metric
    pyiqa.list_models = list_models
    pyiqa.__path__ = []  # a package
    configs = types.ModuleType("pyiqa.default_model_configs")
    configs.DEFAULT_CONFIGS = DEFAULT_CONFIGS
    utils = types.ModuleType("pyiqa.utils")
    utils.__path__ = []
    download = types.ModuleType("pyiqa.utils.download_util")
    download.DEFAULT_CACHE_DIR = str(cache_dir)
    download.download_url_to_file = _download_should_not_run
    download.load_file_from_url = load_file_from_url
    registry = types.ModuleType("pyiqa.utils.registry")
    registry.ARCH_REGISTRY = ARCH_REGISTRY
    modules = {"pyiqa": pyiqa, "pyiqa.default_model_configs": configs, "pyiqa.utils": utils,
               "pyiqa.utils.download_util": download, "pyiqa.utils.registry": registry}
    for name in [n for n in sys.modules if n == "pyiqa" or n.startswith("pyiqa.")]:
        monkeypatch.delitem(sys.modules, name)  # a real pyiqa imported earlier stays out of the way
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    pyiqa.utils, pyiqa.default_model_configs, utils.download_util, utils.registry = utils, configs, download, registry
    return pyiqa
