import textwrap

import pytest

from kdiqa.errors import RegistryError
from kdiqa.registry import LOSSES, TEACHERS, Registry


def test_register_build_and_list():
    reg = Registry("widgets")

    @reg.register("double")
    def double(x: int = 1) -> int:
        return 2 * x

    assert reg.names() == ["double"]
    assert "double" in reg
    assert reg.build("double", x=4) == 8


def test_unknown_name_suggests_close_match():
    reg = Registry("widgets")
    reg.register("efficientnet")(lambda: None)
    with pytest.raises(RegistryError, match=r"unknown widgets 'efficientnte'; did you mean 'efficientnet'"):
        reg.get("efficientnte")


def test_bad_keyword_is_a_user_error():
    reg = Registry("widgets")

    @reg.register()
    def thing(size: int = 1) -> int:
        return size

    with pytest.raises(RegistryError, match="widgets 'thing'.*unexpected keyword argument 'colour'"):
        reg.build("thing", colour="red")


def test_type_error_inside_builder_keeps_traceback():
    reg = Registry("widgets")

    @reg.register()
    def broken() -> None:
        return None + 1  # a bug, not a user error

    with pytest.raises(TypeError):
        reg.build("broken")


def test_double_registration_of_different_objects_fails():
    reg = Registry("widgets")
    reg.register("a")(lambda: 1)
    with pytest.raises(RegistryError, match="registered twice"):
        reg.register("a")(lambda: 2)


def _fake_distribution(tmp_path, group: str, name: str) -> None:
    """A plugin 'installed' only by its metadata on sys.path, as pip would leave it."""
    (tmp_path / "fakeplug_mod.py").write_text(
        textwrap.dedent(
            """
            def build_fake(scale=1.0):
                return {"plugin": "fake", "scale": scale}
            """
        )
    )
    info = tmp_path / "fakeplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = fakeplug_mod:build_fake\n")


def test_entry_point_plugin_is_honoured(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "kdiqa.teachers", "fake_teacher")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("teachers")  # same group as the built-in TEACHERS registry
    assert "fake_teacher" in reg.names()
    assert reg.build("fake_teacher", scale=2.0) == {"plugin": "fake", "scale": 2.0}
    # the global registry picks it up too once asked to rescan
    TEACHERS.reload()
    assert "fake_teacher" in TEACHERS
    TEACHERS._items.pop("fake_teacher")


def test_builtin_losses_registered():
    assert {"mse", "l1", "smooth_l1", "margin_ranking", "plcc", "cosine", "emd", "kl"} <= set(LOSSES.names())
