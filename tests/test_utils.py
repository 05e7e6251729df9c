from __future__ import annotations

import json
from pathlib import Path

import pytest

from pathmllm.utils.atomic import atomic_path, clean_stale_temps, write_json
from pathmllm.utils.optional import MissingDependencyError, available, install_hint, require
from pathmllm.utils.registry import Registry


def test_registry_add_get_metadata_and_order() -> None:
    reg: Registry[object] = Registry("encoder")

    @reg.register("b", embed_dim=8, licence="MIT")
    def build_b() -> str:
        return "b"

    reg.add("a", 1)
    assert reg.get("b") is build_b
    assert reg.entry("b").metadata == {"embed_dim": 8, "licence": "MIT"}
    assert reg.names() == ["a", "b"]
    assert [e.name for e in reg] == ["a", "b"]
    assert "a" in reg and len(reg) == 2


def test_registry_refuses_duplicates_and_names_unknown_keys() -> None:
    reg: Registry[int] = Registry("encoder")
    reg.add("uni", 1)
    with pytest.raises(KeyError, match="already registered"):
        reg.add("uni", 2)
    with pytest.raises(KeyError, match=r"unknown encoder 'conch'; known: uni"):
        reg.get("conch")
    with pytest.raises(ValueError):
        reg.add("", 3)


def test_require_names_the_extra_to_install() -> None:
    assert require("json") is json
    assert install_hint("ray") == 'pip install "pathmllm[ray]"  (or: pip install ray)'
    with pytest.raises(MissingDependencyError, match=r"no_such_module_pathmllm is needed for the demo") as err:
        require("no_such_module_pathmllm", "the demo")
    assert 'pip install "pathmllm[all]"' in str(err.value)
    assert available("json") and not available("no_such_module_pathmllm")


def test_atomic_path_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_clean_stale_temps(tmp_path: Path) -> None:
    (tmp_path / ".coords.h5.tmp-abc").write_text("x")
    (tmp_path / "coords.h5").write_text("y")
    assert clean_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["coords.h5"]
