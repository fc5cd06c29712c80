"""The README's configuration table lists every setting, and its links lead somewhere.

Settings (services/common/config.py) is the source of truth: a new setting without a
row in the README's table fails here, and so does a row for a variable nobody reads.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from services.common.config import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# Read outside Settings: by the clients (services/common/channels.py) and by the codec
# server (workers/codec_server.py).
EXTRA_VARIABLES = {"MINEACTION_TOKEN", "CODEC_SERVER_CORS_ORIGINS", "CODEC_SERVER_TOKEN"}


def setting_aliases() -> set[str]:
    return {field.alias or name.upper() for name, field in Settings.model_fields.items()}


def section(markdown: str, heading: str) -> str:
    """The text under a `## heading`, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    if match is None:
        raise AssertionError(f"no '## {heading}' section")
    return match.group(1)


def table_variables(markdown: str) -> dict[str, tuple[str, str]]:
    """Variable -> (default, meaning), from the rows of the configuration table. A row
    may name several variables (`A` / `B`); each of them is listed."""
    rows: dict[str, tuple[str, str]] = {}
    for line in section(markdown, "Configuration").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not line.lstrip().startswith("|") or set(cells[0]) <= {"-"}:
            continue
        for variable in re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0]):
            rows[variable] = (cells[1], cells[2])
    return rows


def missing_from(markdown: str) -> set[str]:
    return setting_aliases() - set(table_variables(markdown))


def test_every_setting_is_in_the_readme_table() -> None:
    missing = missing_from(README.read_text(encoding="utf-8"))
    assert not missing, f"add these settings to the README's configuration table: {missing}"


def test_every_row_has_a_default_and_a_meaning() -> None:
    for variable, (default, meaning) in table_variables(README.read_text("utf-8")).items():
        assert default, f"{variable}: no default"
        assert len(meaning) > 10, f"{variable}: no meaning"


def test_the_table_names_no_variable_nobody_reads() -> None:
    listed = set(table_variables(README.read_text(encoding="utf-8")))
    unknown = listed - setting_aliases() - EXTRA_VARIABLES
    assert not unknown, f"the README lists variables that are not settings: {unknown}"


def test_the_check_fails_when_a_setting_is_left_out() -> None:
    readme = README.read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `METRICS_PORT`"))
    assert missing_from(readme.replace(row + "\n", "")) == {"METRICS_PORT"}
    with pytest.raises(AssertionError, match="no '## Configuration' section"):
        missing_from(readme.replace("## Configuration", "## Settings"))


def test_the_readme_links_every_doc_and_every_link_resolves() -> None:
    readme = README.read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme))
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in links, f"the README does not link docs/{doc.name}"
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text("utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_the_integrator_guides_python_client_is_valid_python() -> None:
    guide = (ROOT / "docs" / "integrators.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    assert blocks, "docs/integrators.md has no Python example"
    for block in blocks:
        ast.parse(block)
