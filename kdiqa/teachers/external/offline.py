"""Build third-party models without touching the network: every download is stopped before it starts.

Why a guard rather than trusting options: a pyiqa metric fetches files from several places while it
is constructed, and which ones depends on the metric (its own checkpoint through pyiqa's
``load_file_from_url``, a timm or torchvision backbone through the Hugging Face hub or ``torch.hub``,
a CLIP model through ``urllib``). kdiqa never downloads at run time, so while such a model is built
(:func:`no_downloads`):

- pyiqa's and ``torch.hub``'s file fetchers (``download_url_to_file``, called only when the file is not
  already at its cache path) raise at once, naming the file and where to put it;
- Hugging Face hub look-ups (timm's backbones, transformers) run in the hub's offline mode, served from
  the local cache only; a file missing there stops the build, naming the repository and file;
- a URL opened directly (``urllib.request.urlopen``, e.g. pyiqa's CLIP loader) stops it, naming the URL;
- as a backstop, any other attempt to open an internet socket (or resolve a host name) stops it too,
  naming the host.

Each stop is raised as a ``BaseException`` subclass, so no library's ``except Exception`` can swallow it
and carry on with a half-initialised model; :func:`no_downloads` turns it into one
:class:`MissingFileError` line. Files already where the libraries look (``<hub dir>/pyiqa/<file>``,
``<hub dir>/checkpoints/<file>``, the Hugging Face cache) are used as they are: that is how local
files are fed in. The patches are process-wide for the duration of the build and restored afterwards.
"""
from __future__ import annotations

import inspect
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kdiqa.errors import CheckpointError

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", ""})


class MissingFileError(CheckpointError):
    """A model needs a file that is not on this machine, and kdiqa will not download it."""


class _Blocked(BaseException):  # noqa: N818 - internal control flow, never seen by users
    """Raised inside third-party code at the first network attempt; a BaseException so it propagates."""


@dataclass
class Guard:
    """What the guard needs to word its message, and the attempts it stopped."""

    owner: str  # e.g. "pyiqa metric 'topiq_nr'"
    hub_dir: Path  # torch.hub's folder during the build (pyiqa keeps its files in <hub_dir>/pyiqa)
    main_hint: str | None = None  # how to supply the model's own checkpoint (e.g. "teacher.options.weights")
    hub_option: str = "teacher.options.hub_dir"
    switch_off: str = "teacher.options.metric_options"
    stopped: list[str] = field(default_factory=list)
    active: bool = False  # a module that imported a patched function by name keeps it: it passes through after the build

    def stop(self, message: str) -> None:
        self.stopped.append(message)
        raise _Blocked(message)

    def file_needed(self, url: str, dest: str | os.PathLike) -> None:
        """A URL download to ``dest`` was about to start."""
        dest = Path(dest)
        name = dest.name or os.path.basename(urlparse(url).path)
        where = f"put it at {dest} ({self.hub_option} sets the folder above {dest.parent.name}/, now {self.hub_dir})"
        if self.main_hint and _is_default_checkpoint(url):
            where = f"give it as {self.main_hint}, or {where}"
        self.stop(f"{self.owner} needs {name} ({url}) and kdiqa never downloads: {where}")

    def hub_file_needed(self, repo: str, filename: str) -> None:
        cache = _hf_cache_dir()
        self.stop(
            f"{self.owner} needs {filename} of {repo} from the Hugging Face hub and kdiqa never downloads: put it in "
            f"the Hugging Face cache ({cache}; `hf download {repo} {filename}` on a connected machine, then copy "
            f"the cache) or switch that loading off in {self.switch_off}"
        )

    def url_needed(self, url: str) -> None:
        """A URL opened directly (e.g. pyiqa's CLIP loader, which keeps its files in <hub_dir>/clip)."""
        name = os.path.basename(urlparse(url).path) or url
        self.stop(
            f"{self.owner} needs {name} ({url}) and kdiqa never downloads: put it where the library looks for it "
            f"(pyiqa: {self.hub_dir}/pyiqa/, CLIP models {self.hub_dir}/clip/, backbones {self.hub_dir}/checkpoints/; "
            f"{self.hub_option} sets {self.hub_dir}) or switch that loading off in {self.switch_off}"
        )

    def host_needed(self, host: str) -> None:
        self.stop(
            f"{self.owner} tried to reach {host} while being built and kdiqa never downloads: supply the file it "
            f"fetches locally (pyiqa and torch.hub look in {self.hub_dir}; {self.hub_option} sets it) or switch "
            f"that loading off in {self.switch_off}"
        )


def _is_default_checkpoint(url: str) -> bool:
    """Whether a pyiqa architecture module asked for one of its own released checkpoints.

    pyiqa's architecture modules list their released weights in a module-level ``default_model_urls``;
    the first such module on the call stack is the one being built.
    """
    frame = inspect.currentframe()
    while frame is not None:
        urls = frame.f_globals.get("default_model_urls")
        if isinstance(urls, dict):
            return url in {str(v) for v in urls.values()}
        frame = frame.f_back
    return False


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - only for the message
        return "$HF_HOME/hub"


class _Patches:
    """Attribute replacements restored in reverse order, including attributes that did not exist."""

    _MISSING = object()

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, owner.__dict__.get(name, self._MISSING) if isinstance(owner, type) else getattr(owner, name, self._MISSING)))
        setattr(owner, name, value)

    def restore(self) -> None:
        for owner, name, old in reversed(self._saved):
            if old is self._MISSING:
                try:
                    delattr(owner, name)
                except AttributeError:
                    pass
            else:
                setattr(owner, name, old)
        self._saved.clear()


def _host_of(address: Any) -> str:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address)


def _guard_sockets(patches: _Patches, guard: Guard) -> None:
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_getaddrinfo = socket.getaddrinfo

    def is_internet(sock: socket.socket) -> bool:
        return sock.family in (socket.AF_INET, socket.AF_INET6)

    def connect(sock: socket.socket, address: Any) -> Any:
        if is_internet(sock) and _host_of(address) not in LOCAL_HOSTS:
            guard.host_needed(_host_of(address))
        return original_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> Any:
        if is_internet(sock) and _host_of(address) not in LOCAL_HOSTS:
            guard.host_needed(_host_of(address))
        return original_connect_ex(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host or "")
        if name not in LOCAL_HOSTS:
            guard.host_needed(name)
        return original_getaddrinfo(host, *args, **kwargs)

    patches.set(socket.socket, "connect", connect)
    patches.set(socket.socket, "connect_ex", connect_ex)
    patches.set(socket, "getaddrinfo", getaddrinfo)


def _opener(guard: Guard, original: Callable[..., Any]) -> Callable[..., Any]:
    def urlopen(url: Any, *args: Any, **kwargs: Any) -> Any:
        if not guard.active:
            return original(url, *args, **kwargs)
        guard.url_needed(str(getattr(url, "full_url", url)))

    return urlopen


def _fetcher(guard: Guard, original: Callable[..., Any]) -> Callable[..., Any]:
    def download_url_to_file(url: str, dst: str, *args: Any, **kwargs: Any) -> Any:
        if not guard.active:
            return original(url, dst, *args, **kwargs)
        guard.file_needed(url, dst)

    return download_url_to_file


def _local_only(guard: Guard, original: Callable[..., Any]) -> Callable[..., Any]:
    """A Hugging Face ``hf_hub_download`` that answers from the local cache or stops the build."""

    def hf_hub_download(*args: Any, **kwargs: Any) -> Any:
        if not guard.active:
            return original(*args, **kwargs)
        repo = kwargs.get("repo_id", args[0] if args else "?")
        filename = kwargs.get("filename", args[1] if len(args) > 1 else "?")
        kwargs["local_files_only"] = True
        try:
            return original(*args, **kwargs)
        except Exception:  # noqa: BLE001 - every failure here means the file is not cached locally
            guard.hub_file_needed(str(repo), str(filename))

    return hf_hub_download


@contextmanager
def no_downloads(guard: Guard) -> Iterator[Guard]:
    """Run a model's construction with every download stopped (see the module docstring).

    Raises :class:`MissingFileError` (one line) for the first file or host it needed, even if the
    library caught the stop and carried on. Not thread-safe: the patches are process-wide.
    """
    import torch.hub

    try:  # imported before patching, so that they bind the real functions, not the guard's
        import huggingface_hub  # noqa: F401
        import timm.models._hub  # noqa: F401
    except ImportError:  # pragma: no cover - both come with kdiqa's dependencies
        pass
    patches = _Patches()
    previous_hub = torch.hub.get_dir()
    guard.active = True
    try:
        torch.hub.set_dir(str(guard.hub_dir))
        patches.set(torch.hub, "download_url_to_file", _fetcher(guard, torch.hub.download_url_to_file))
        pyiqa_download = sys.modules.get("pyiqa.utils.download_util")
        if pyiqa_download is not None:
            patches.set(pyiqa_download, "download_url_to_file", _fetcher(guard, pyiqa_download.download_url_to_file))
            patches.set(pyiqa_download, "DEFAULT_CACHE_DIR", str(guard.hub_dir / "pyiqa"))
        timm_hub = sys.modules.get("timm.models._hub")
        if timm_hub is not None:
            patches.set(timm_hub, "download_url_to_file", _fetcher(guard, timm_hub.download_url_to_file))
            if getattr(timm_hub, "hf_hub_download", None) is not None:
                patches.set(timm_hub, "hf_hub_download", _local_only(guard, timm_hub.hf_hub_download))
        hf_constants = sys.modules.get("huggingface_hub.constants")
        if hf_constants is not None:  # read at call time: cache look-ups only, and no side fetches (user-agent registry)
            patches.set(hf_constants, "HF_HUB_OFFLINE", True)
        hf = sys.modules.get("huggingface_hub")
        if hf is not None and getattr(hf, "hf_hub_download", None) is not None:
            patches.set(hf, "hf_hub_download", _local_only(guard, hf.hf_hub_download))
        hf_file = sys.modules.get("huggingface_hub.file_download")
        if hf_file is not None and getattr(hf_file, "hf_hub_download", None) is not None:
            patches.set(hf_file, "hf_hub_download", _local_only(guard, hf_file.hf_hub_download))
        import urllib.request

        patches.set(urllib.request, "urlopen", _opener(guard, urllib.request.urlopen))
        _guard_sockets(patches, guard)
        try:
            yield guard
        except BaseException:  # our stop, or what a library made of it: the stop is the story
            if guard.stopped:
                raise MissingFileError(guard.stopped[0]) from None
            raise
        if guard.stopped:  # stopped, caught, and carried on: the model is not what it claims to be
            raise MissingFileError(guard.stopped[0])
    finally:
        guard.active = False
        patches.restore()
        torch.hub.set_dir(previous_hub)
