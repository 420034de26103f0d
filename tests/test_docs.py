"""The documentation stays true to the code and navigable: README.md is the
front door (short, two-command quick start, a link to every page), docs/
holds the reference, and every config field, command, option, reason code
and plugin name the code defines is documented on its page; every relative
link and anchor resolves; no page points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from engine.cli import build_parser
from engine.config import Config, ForecasterConfig, TargetConfig
from policies.config import Cooldown, Margin, PolicyConfig, Reactive, Smoothing, Stabilization
from tests.support import ROOT

DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]


def _read(page: str) -> str:
    return (DOCS / page).read_text()


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose(text: str) -> str:
    """The text without fenced code blocks (a `# comment` there is no heading)."""
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)


def _subcommands() -> dict:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


# ------------------------------------------------------------------ README
def test_docs_pages_exist():
    for page in ("configuration.md", "reason-codes.md", "cli.md", "operations.md", "observability.md",
                 "forecasters.md", "backtest.md", "development.md", "actuators/README.md",
                 "actuators/aws.md", "actuators/alibaba.md", "actuators/terraform.md",
                 "actuators/kubernetes.md"):
        assert (DOCS / page).is_file(), f"docs/{page} is missing"


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n < 250, f"README.md has {n} lines; move reference material into docs/"


def test_readme_links_every_docs_page():
    links = set(_links(README))
    missing = [_rel(p) for p in DOCS.rglob("*.md") if _rel(p) not in {_rel((ROOT / t).resolve()) for t, _ in links}]
    assert not missing, f"docs pages not linked from README.md: {missing}"


def test_quick_start_is_two_commands():
    text = README.read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [ln for ln in block.strip().splitlines() if ln.strip()]
    assert len(lines) == 2
    assert "forescale demo" in lines[0]
    assert lines[1].split("#")[0].strip() == "bash .ci/run"


# ------------------------------------------------------------ reference pages
def _fields(model: type[BaseModel]) -> list[str]:
    return [name for name in model.model_fields if name != "base_dir"]


@pytest.mark.parametrize("model", [Config, TargetConfig, ForecasterConfig, PolicyConfig, Margin, Smoothing,
                                   Reactive, Stabilization, Cooldown])
def test_every_config_field_is_documented(model):
    text = _read("configuration.md")
    missing = [f for f in _fields(model) if not re.search(rf"\b{f}\b", text)]
    assert not missing, f"{model.__name__} fields missing from docs/configuration.md: {missing}"


def test_every_command_is_documented():
    text = _read("cli.md")
    missing = [c for c in _subcommands() if f"forescale {c}" not in text]
    assert not missing, f"commands missing from docs/cli.md: {missing}"


def test_every_command_option_is_documented():
    text = _read("cli.md")
    missing = []
    for name, sp in _subcommands().items():
        for action in sp._actions:
            if action.help == "==SUPPRESS==" or not action.option_strings or "--help" in action.option_strings:
                continue
            opt = max(action.option_strings, key=len)
            if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text):
                missing.append(f"{name} {opt}")
    assert not missing, f"options missing from docs/cli.md: {missing}"


def test_every_exit_status_is_documented():
    section = _read("cli.md").split("## Exit status", 1)[1]
    for status in (0, 1, 2):
        assert re.search(rf"^\| {status} \|", section, re.M), f"exit status {status} missing from docs/cli.md"


def _policy_codes() -> set[str]:
    src = "\n".join(p.read_text() for p in (ROOT / "policies").glob("*.py"))
    codes = set(re.findall(r'Step\(\s*"\w+",\s*[^,]+,\s*"([A-Z]\w+)"', src))
    codes |= set(re.findall(r'\(\s*"([A-Z]\w+)",\s*f?"', src))  # fallback reasons: ("Code", "message")
    return codes


def test_every_policy_reason_code_is_documented():
    codes = _policy_codes()
    assert len(codes) > 20
    text = _read("reason-codes.md")
    missing = sorted(c for c in codes if f"`{c}`" not in text)
    assert not missing, f"reason codes missing from docs/reason-codes.md: {missing}"


def test_every_quality_gate_reason_is_documented():
    src = (ROOT / "forecasters" / "quality.py").read_text()
    codes = set(re.findall(r'^[A-Z_]+ = "([A-Z]\w+)"$', src, re.M))
    assert len(codes) >= 5
    text = _read("reason-codes.md")
    missing = sorted(c for c in codes if f"`{c}`" not in text)
    assert not missing, f"quality-gate reasons missing from docs/reason-codes.md: {missing}"


def _builtin(registry) -> list[str]:
    """The built-in plugin names (not test doubles a test module registered)."""
    return sorted(registry._builtin)


def test_every_actuator_type_is_documented():
    from actuators import registry

    text = _read("actuators/README.md")
    missing = [n for n in _builtin(registry) if f"`{n}`" not in text]
    assert not missing, f"actuator types missing from docs/actuators/README.md: {missing}"


def test_every_forecaster_is_documented():
    from forecasters import registry

    text = _read("forecasters.md")
    missing = [n for n in _builtin(registry) if f"`{n}`" not in text]
    assert not missing, f"forecasters missing from docs/forecasters.md: {missing}"


# ------------------------------------------------------------ links, anchors
def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6} +(.+?) *#*$", _prose(path.read_text()), re.M):
        s = _slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def _links(path: Path) -> list[tuple[str, str]]:
    """(target path relative to ROOT, anchor) of every relative link of a page."""
    text = re.sub(r"`[^`\n]*`(?!\]\()", "", _prose(path.read_text()))  # code spans, but not [`x`](link)
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path.resolve()
        out.append((str(resolved.relative_to(ROOT.resolve())) if resolved.is_relative_to(ROOT.resolve())
                    else str(resolved), anchor))
    return out


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_relative_link_resolves(page):
    broken = []
    for target, anchor in _links(page):
        dest = ROOT / target
        if not dest.resolve().is_relative_to(ROOT.resolve()):
            broken.append(f"{target}: outside the repository")
        elif not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}#{anchor}: no such heading")
    assert not broken, f"{_rel(page)}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_page_points_outside_the_repository_or_at_issues(page):
    text = page.read_text()
    assert "../shared" not in text, f"{_rel(page)} points at ../shared, outside the repository"
    outside = re.findall(r"(?<![\w.])/work/\S*", text)
    assert not outside, f"{_rel(page)} points at this development machine's paths: {outside}"
    issues = re.findall(r"\bissues? *#?\d+\b|(?<![\w&/#])#\d+\b", text, re.I)
    assert not issues, f"{_rel(page)} mentions issue numbers (development history): {issues}"
