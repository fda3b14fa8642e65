"""The entry-point reader against importlib.metadata, the reference it replaces in the root."""
from __future__ import annotations

import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import List, Tuple

import pytest

from orchestrator.spec import entrypoints

pytestmark = pytest.mark.timeout(30)


def dist(site: Path, directory: str, entry_points: str, name: str = "") -> Path:
    info = site / directory
    info.mkdir(parents=True)
    if name:
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n\nName: not this one\n")
    (info / "entry_points.txt").write_text(entry_points)
    return info


@pytest.fixture
def path(tmp_path, monkeypatch):
    """A sys.path of two site directories, and nothing else."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.setattr(sys, "path", [str(first), str(second)])
    return first, second


def ours(group: str) -> List[Tuple[str, str]]:
    return [(entry.name, entry.value) for entry in entrypoints.entry_points(group)]


def reference(group: str) -> List[Tuple[str, str]]:
    return [(entry.name, entry.value) for entry in metadata.entry_points(group=group)]


def test_reads_what_importlib_metadata_reads(path):
    first, second = path
    dist(first, "alpha-1.0.dist-info", "# a comment\n\n[orch]\n  one = alpha_mod \n"
                                       "two=alpha_mod:make.workers [extra]\n[console_scripts]\nalpha = alpha_mod:main\n")
    dist(first, "beta_pkg-2.0.egg-info", "[orch]\nbeta = beta_mod:Plugin\n")
    dist(second, "gamma-0.1.dist-info", "[other]\nx = y\n")
    assert sorted(ours("orch")) == sorted(reference("orch")) == [
        ("beta", "beta_mod:Plugin"), ("one", "alpha_mod"), ("two", "alpha_mod:make.workers [extra]")]
    assert ours("console_scripts") == reference("console_scripts") == [("alpha", "alpha_mod:main")]
    assert ours("missing") == reference("missing") == []


def test_first_distribution_of_a_name_on_the_path_wins(path):
    first, second = path
    dist(first, "Same.Name-2.0.dist-info", "[orch]\nnew = new_mod\n")
    dist(second, "same_name-1.0.dist-info", "[orch]\nold = old_mod\n")
    assert ours("orch") == reference("orch") == [("new", "new_mod")]


def test_zip_on_the_path_is_read_through_importlib_metadata(tmp_path, monkeypatch):
    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("zipped-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: zipped\nVersion: 1.0\n")
        zipped.writestr("zipped-1.0.dist-info/entry_points.txt", "[orch]\nzipped = zipped_mod\n")
    monkeypatch.setattr(sys, "path", [str(archive), str(tmp_path / "not-there")])
    assert ours("orch") == reference("orch") == [("zipped", "zipped_mod")]


def test_load_imports_the_module_and_follows_the_attribute_path(path, monkeypatch):
    first, _ = path
    (first / "ep_target.py").write_text("class Holder:\n    class Inner:\n        value = 42\n")
    dist(first, "target-1.0.dist-info", "[orch]\nwhole = ep_target\ninner = ep_target:Holder.Inner [x]\n")
    monkeypatch.delitem(sys.modules, "ep_target", raising=False)
    loaded = {entry.name: entry.load() for entry in entrypoints.entry_points("orch")}
    assert loaded["whole"] is sys.modules["ep_target"]
    assert loaded["inner"].value == 42


def test_a_malformed_value_fails_to_load_with_the_value_named(path):
    first, _ = path
    dist(first, "bad-1.0.dist-info", "[orch]\nbad = not a module path\n")
    (entry,) = entrypoints.entry_points("orch")
    with pytest.raises(ValueError, match="not a module path"):
        entry.load()


def test_distribution_name_comes_from_the_metadata_headers(path):
    first, _ = path
    dist(first, "fancy_name-1.0.dist-info", "[orch]\na = a\n", name="Fancy-Name")
    dist(first, "bare-3.0.dist-info", "[orch]\nb = b\n")
    named = {entry.name: entry.distribution() for entry in entrypoints.entry_points("orch")}
    assert named == {"a": "Fancy-Name", "b": "bare"}
