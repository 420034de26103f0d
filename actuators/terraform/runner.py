"""Runs of the terraform binary in one workspace: in automation mode, each
bounded by its timeout and by what is left of the apply in progress,
interrupted cleanly (SIGINT, then kill) when it runs over, its errors read
from Terraform's structured diagnostics."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from engine.core.errors import LimitExceeded, PermanentActuatorError, TransientActuatorError

from .plan import _clip, _diagnostic_text, _error_diagnostics, _Run, _stderr_errors

logger = logging.getLogger("actuators.terraform")


class TerraformRunner:
    """The terraform binary of ``config`` run in ``workspace`` with ``env``.

    ``deadline`` (a ``monotonic()`` time, set by the actuator while an apply
    runs) caps every run's timeout at what is left of ``apply_timeout``."""

    def __init__(self, config: Any, workspace: Path, env: dict[str, str],
                 monotonic: Callable[[], float]) -> None:
        self.config = config
        self.workspace = workspace
        self._env = env
        self._monotonic = monotonic
        self.deadline: float | None = None

    def binary(self) -> str:
        binary = self.config.binary
        found = shutil.which(binary)
        if found is None:
            where = "does not exist or is not executable" if os.sep in binary else "is not on PATH"
            raise PermanentActuatorError(
                f"terraform binary {binary!r} {where}; install Terraform or set binary: "
                "to its path")
        return found

    def run(self, args: list[str], *, timeout: timedelta, what: str) -> _Run:
        if self.deadline is not None:  # inside apply: what is left of apply_timeout
            left = self.deadline - self._monotonic()
            if left <= 0:
                raise TransientActuatorError(
                    f"terraform {what} in {self.workspace} not started: the apply already took "
                    f"apply_timeout ({self.config.apply_timeout.total_seconds():g}s)")
            timeout = min(timeout, timedelta(seconds=left))
        argv = [self.binary(), *args]
        # argv holds paths and flags only: values travel in files, never on
        # the command line, so logging it leaks nothing.
        logger.debug("terraform %s: running %s", self.workspace, " ".join(argv[1:]))
        try:
            proc = subprocess.Popen(argv, cwd=self.workspace, env=self._env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                    errors="replace")
        except OSError as exc:
            raise PermanentActuatorError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            stdout, stderr = proc.communicate(timeout=timeout.total_seconds())
        except subprocess.TimeoutExpired:
            self._interrupt(proc)
            raise TransientActuatorError(
                f"terraform {what} in {self.workspace} did not finish within "
                f"{timeout.total_seconds():g}s and was interrupted") from None
        except BaseException:
            self._interrupt(proc)
            raise
        return _Run(proc.returncode, stdout, stderr)

    def _interrupt(self, proc: subprocess.Popen) -> None:
        """SIGINT first: Terraform then stops cleanly, persists what it
        changed and releases the state lock. Kill only if it will not."""
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=self.config.interrupt_grace.total_seconds())
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()

    def error(self, what: str, run: _Run) -> Exception:
        diagnostics = _error_diagnostics(run.stdout)
        if diagnostics:
            text = "; ".join(_diagnostic_text(d) for d in diagnostics)
            summaries = {d.get("summary", "") for d in diagnostics}
        else:
            text = _stderr_errors(run.stderr) or f"exit status {run.returncode}"
            summaries = {text.splitlines()[0]} if text else set()
        text = _clip(text)
        message = f"terraform {what} in {self.workspace} failed: {text}"
        lock_ids = tuple(f"terraform-lock:{m}" for m in re.findall(r"ID:\s+(\S+)", text))
        if any("Error acquiring the state lock" in s for s in summaries) or \
                "Error acquiring the state lock" in text:
            return TransientActuatorError(message, request_ids=lock_ids)
        if "Saved plan is stale" in summaries:
            return TransientActuatorError(message)
        if self._is_validation_of_our_variable(diagnostics):
            return LimitExceeded(message)
        return PermanentActuatorError(message)

    def _is_validation_of_our_variable(self, diagnostics: list[dict[str, Any]]) -> bool:
        ours = f"var.{self.config.variable}"
        for d in diagnostics:
            if d.get("summary") != "Invalid value for variable":
                continue
            values = (d.get("snippet") or {}).get("values") or []
            if any(v.get("traversal") == ours for v in values) or ours in d.get("detail", ""):
                return True
        return False


