"""The README stays true to the code: every config field and every command
it should document is there, and the quick start is two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from engine.cli import build_parser
from engine.config import Config, ForecasterConfig, TargetConfig
from policies.config import Cooldown, Margin, PolicyConfig, Reactive, Smoothing, Stabilization
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def _fields(model: type[BaseModel]) -> list[str]:
    return [name for name in model.model_fields if name != "base_dir"]


@pytest.mark.parametrize("model", [Config, TargetConfig, ForecasterConfig, PolicyConfig, Margin, Smoothing,
                                   Reactive, Stabilization, Cooldown])
def test_every_config_field_is_documented(model):
    missing = [f for f in _fields(model) if not re.search(rf"\b{f}\b", README)]
    assert not missing, f"{model.__name__} fields missing from README: {missing}"


def test_every_command_is_documented():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = [c for c in sub.choices if f"forescale {c}" not in README]
    assert not missing, f"commands missing from README: {missing}"


def test_quick_start_is_two_commands():
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [ln for ln in block.strip().splitlines() if ln.strip()]
    assert len(lines) == 2
    assert "forescale demo" in lines[0]
    assert lines[1].split("#")[0].strip() == "bash .ci/run"


def test_every_policy_reason_code_is_documented():
    root = ROOT / "policies"
    src = "\n".join(p.read_text() for p in root.glob("*.py"))
    codes = set(re.findall(r'Step\(\s*"\w+",\s*[^,]+,\s*"([A-Z]\w+)"', src))
    codes |= set(re.findall(r'\(\s*"([A-Z]\w+)",\s*f?"', src))  # fallback reasons: ("Code", "message")
    assert len(codes) > 20
    missing = sorted(c for c in codes if f"`{c}`" not in README)
    assert not missing, f"reason codes missing from README: {missing}"
