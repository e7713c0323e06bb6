"""The documentation: the configuration page lists every setting, and every docs page or section that the
code, configs, tests, benchmarks or README cite exists."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _reference_module():
    spec = importlib.util.spec_from_file_location("settings_reference", DOCS / "hooks" / "settings_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _settings_dataclasses() -> list[type]:
    """Every dataclass defined in the three settings modules."""
    from movielens_sids import settings
    from movielens_sids.model import config as model_config
    from movielens_sids.retrieval import config as retrieval_config

    return [obj for module in (settings, model_config, retrieval_config) for obj in vars(module).values()
            if dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__]


def test_the_configuration_page_lists_every_field_of_every_settings_dataclass():
    ref = _reference_module()
    listed = ref.settings_keys(ref.reference())
    sections = {cls: name for name, cls in ref.sections()}
    from movielens_sids.model.config import RQKMeansConfig

    for cls in _settings_dataclasses():
        # residual k-means is built from the model section's settings of the same names
        name = "model" if cls is RQKMeansConfig else sections.get(cls)
        assert name is not None, f"{cls.__name__} is not a section of Config: the page cannot list it"
        missing = {f"{name}.{f.name}" for f in dataclasses.fields(cls)} - listed
        assert not missing, f"{cls.__name__}: not on the configuration page: {sorted(missing)}"
    assert "experiment" in listed


def test_a_field_without_a_docstring_fails_the_page():
    ref = _reference_module()

    @dataclasses.dataclass
    class Section:
        """A section."""

        documented: int = 1
        """Has its line."""
        bare: int = 2

    with pytest.raises(ref.MissingDocstring, match="bare"):
        ref.section_table("x", Section)


def _slug(heading: str) -> str:
    """MkDocs' anchor of a heading (the toc extension's slugify)."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "").strip().lower())
    return re.sub(r"[-\s]+", "-", text).strip("-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+?)\s*$", page.read_text(encoding="utf-8"), flags=re.M)}


def _cited_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted(DOCS.glob("*.md"))]
    for folder, patterns in (("src", ("*.py", "*.yaml")), ("tests", ("*.py",)), ("benchmarks", ("*.py", "*.sh"))):
        for pattern in patterns:
            files += sorted((ROOT / folder).rglob(pattern))
    return files


DOCS_LINK = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")
PAGE_LINK = re.compile(r"\]\(([\w-]+\.md)(?:#([\w-]+))?\)")  # a link between two docs pages
README_SECTION = re.compile(r"README(?::|,)\s*[\"']([^\"']+)[\"']")


def test_every_cited_docs_page_and_section_exists():
    pages = {p.name: _anchors(p) for p in DOCS.glob("*.md")}
    readme_sections = {h.strip() for h in re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), flags=re.M)}
    broken = []
    for path in _cited_files():
        where = str(path.relative_to(ROOT))
        text = path.read_text(encoding="utf-8", errors="replace")
        links = [*DOCS_LINK.findall(text), *(PAGE_LINK.findall(text) if path.parent == DOCS else [])]
        for page, anchor in links:
            if page not in pages:
                broken.append(f"{where}: docs/{page}")
            elif anchor and anchor not in pages[page]:
                broken.append(f"{where}: docs/{page}#{anchor}")
        broken += [f"{where}: README section {s!r}" for s in README_SECTION.findall(text) if s not in readme_sections]
    assert broken == []


def test_the_readme_stays_short_and_its_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    command = re.search(r"# 2\. set up and run the tests\n(.+)\n", readme).group(1)
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mkdocs") is None and importlib.util.find_spec("mkdocs") is None,
                    reason="needs the docs extra: pip install -e '.[docs]'")
def test_the_site_builds_strictly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "model.group_weight" in (tmp_path / "site" / "configuration" / "index.html").read_text()
