"""What forescale reads from Terraform's machine-readable output: the changes
of a ``show -json`` plan, the error diagnostics of ``-json`` runs, and the
masking of sensitive values in the human-readable plan."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

_MAX_ERROR_TEXT = 2000
_NOT_CHANGES = {"no-op", "read"}


@dataclass(frozen=True)
class Change:
    """One address a plan changes and how (Terraform's action list)."""

    address: str
    actions: tuple[str, ...]
    #: Terraform's ``action_reason`` (``replace_because_tainted``...), if any
    reason: str | None = None

    @property
    def tainted(self) -> bool:
        return self.reason == "replace_because_tainted"

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "actions": list(self.actions),
                **({"reason": self.reason} if self.reason else {})}

    def __str__(self) -> str:
        return f"{self.address} ({'+'.join(self.actions)}{', tainted' if self.tainted else ''})"


@dataclass(frozen=True)
class _Plan:
    """A saved plan and what ``show -json`` says about it."""

    path: Path
    has_changes: bool
    document: Mapping[str, Any]

    @property
    def changes(self) -> list[Change]:
        return plan_changes(self.document)


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str




# ---------------------------------------------------------------------- plan JSON
def plan_changes(document: Mapping[str, Any]) -> list[Change]:
    """Every resource and root output a ``show -json`` plan changes. No-ops and
    data-source reads are not changes; an import or a ``removed`` block is."""
    changes: list[Change] = []
    for rc in document.get("resource_changes") or []:
        change = rc.get("change") or {}
        actions = tuple(change.get("actions") or ())
        if change.get("importing"):
            actions = tuple(a for a in actions if a != "no-op") + ("import",)
        if actions and not set(actions) <= _NOT_CHANGES:
            changes.append(Change(rc.get("address", "?"), actions, rc.get("action_reason")))
    for name, oc in sorted((document.get("output_changes") or {}).items()):
        actions = tuple(oc.get("actions") or ())
        if actions and not set(actions) <= _NOT_CHANGES:
            changes.append(Change(f"output.{name}", actions))
    return changes


def count_actions(changes: Sequence[Change]) -> dict[str, int]:
    """Terraform's own "N to add, N to change, N to destroy" over resources
    (a replacement counts as one add and one destroy; outputs are not counted)."""
    counts = {"add": 0, "change": 0, "destroy": 0}
    for c in changes:
        if c.address.startswith("output."):
            continue
        counts["add"] += "create" in c.actions
        counts["change"] += "update" in c.actions
        counts["destroy"] += "delete" in c.actions
    return counts


def redact_sensitive(text: str, document: Mapping[str, Any]) -> str:
    """``text`` with every string the plan ``document`` marks sensitive
    replaced by ``(sensitive value)``: values of root variables declared
    ``sensitive``, and attribute and output values under a sensitive mark
    before or after the change.

    Terraform masks those values where it still knows the mark, but prints
    them in clear where a value reached an attribute that lost it (e.g.
    ``terraform_data``'s ``output`` in the prior state shows its sensitive
    ``input``). The plan text goes to approvers and the audit record, so
    forescale masks every occurrence. Strings shorter than 4 characters are
    left alone: masking them would garble the plan and hide nothing.
    """
    secrets: set[str] = set()
    declared = ((document.get("configuration") or {}).get("root_module") or {}).get("variables") or {}
    values = document.get("variables") or {}
    for name, declaration in declared.items():
        if (declaration or {}).get("sensitive"):
            _strings((values.get(name) or {}).get("value"), secrets)
    changes = [rc.get("change") or {} for rc in document.get("resource_changes") or []]
    changes += list((document.get("output_changes") or {}).values())
    for change in changes:
        for side in ("before", "after"):
            _marked(change.get(side), change.get(f"{side}_sensitive"), secrets)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) < 4:
            continue
        text = text.replace(json.dumps(secret)[1:-1], "(sensitive value)")
        text = text.replace(secret, "(sensitive value)")
    return text


def _marked(value: Any, mark: Any, into: set[str]) -> None:
    """Collect the strings of ``value`` under ``mark`` (Terraform's
    ``*_sensitive`` shape: ``true`` marks a whole subtree, objects and lists
    mirror the value)."""
    if mark is True:
        _strings(value, into)
    elif isinstance(mark, Mapping) and isinstance(value, Mapping):
        for key, sub in mark.items():
            if key in value:
                _marked(value[key], sub, into)
    elif isinstance(mark, list) and isinstance(value, list):
        for item, sub in zip(value, mark):
            _marked(item, sub, into)


def _strings(value: Any, into: set[str]) -> None:
    if isinstance(value, str):
        into.add(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            _strings(v, into)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _strings(v, into)


# ---------------------------------------------------------------------- helpers
def _error_diagnostics(stdout: str) -> list[dict[str, Any]]:
    found = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        diag = msg.get("diagnostic") if isinstance(msg, dict) else None
        if isinstance(diag, dict) and diag.get("severity") == "error":
            found.append(diag)
    return found


def _diagnostic_text(diag: Mapping[str, Any]) -> str:
    # summary, detail and where; never the snippet's values (they can show
    # other variables' values).
    text = diag.get("summary", "error")
    detail = (diag.get("detail") or "").strip()
    if detail:
        text += f": {detail}"
    rng = diag.get("range") or {}
    if rng.get("filename"):
        text += f" (at {rng['filename']}:{(rng.get('start') or {}).get('line', '?')})"
    return text


def _stderr_errors(stderr: str) -> str:
    """The ``Error:`` blocks of Terraform's plain-text stderr (warnings, such
    as a missing CLI config file, are left out)."""
    lines = [re.sub(r"^[│╷╵]\s?", "", ln) for ln in stderr.splitlines()]
    start = next((i for i, ln in enumerate(lines) if ln.startswith("Error:")), None)
    if start is None:
        return stderr.strip()
    kept = [ln for ln in lines[start:] if ln.strip()]
    return "\n".join(kept).removeprefix("Error: ").strip()


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + " ..."


def _go_duration(td: timedelta) -> str:
    return f"{max(0, round(td.total_seconds() * 1000))}ms"


def _show(value: Any) -> str:
    return "unknown" if value is None else json.dumps(value)
