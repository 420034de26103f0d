"""The ``terraform`` actuator itself: its config, the plan-check-apply flow
and the tfvars file it owns (see the package docstring for the whole flow;
the runs of the binary are in :mod:`.runner`)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

from pydantic import field_validator, model_validator

from engine.core.checks import repeated
from engine.core.errors import (
    ConfigError,
    LimitExceeded,
    PermanentActuatorError,
)
from engine.core.plugins import Capabilities
from engine.core.types import ActionPlan, ActuationResult, CapacityReading
from engine.core.units import Duration

from ..base import ActuatorConfig, Monotonic, Sleep, require_non_negative
from .plan import (
    Change,
    _go_duration,
    _Plan,
    _show,
    count_actions,
    redact_sensitive,
)
from .runner import TerraformRunner

logger = logging.getLogger("actuators.terraform")

#: the file forescale owns in the workspace; Terraform loads ``*.auto.tfvars.json``
#: automatically (https://developer.hashicorp.com/terraform/language/values/variables)
TFVARS_FILE = "forescale.auto.tfvars.json"

#: the oldest Terraform whose ``plan -json`` and ``show -json`` carry what we read
#: (machine-readable UI since 0.15.3, output_changes in show -json since 0.14)
MIN_TERRAFORM = (1, 0)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class TerraformConfig(ActuatorConfig):
    type: str = "terraform"
    #: the root module directory (holds the ``.tf`` files and, for the local
    #: backend, ``terraform.tfstate``)
    workspace: Path
    #: the input variable that holds the capacity, e.g. ``desired_capacity``
    variable: str
    #: ``number``: the variable gets the capacity integer; ``ladder``: the
    #: capacity indexes the target's instance-type ladder and the variable
    #: gets that name (``t3.large``)
    value_kind: Literal["number", "ladder"] = "number"
    #: the terraform executable: a name looked up on PATH, or a path
    binary: str = "terraform"
    #: apply a plan that also changes things the capacity variable does not drive
    allow_drift: bool = False
    #: how long each plan/apply waits for the state lock (``-lock-timeout``);
    #: Terraform's own default is 0s, which fails at once when a person's
    #: apply is running
    lock_timeout: Duration = timedelta(seconds=30)
    #: how read() learns the current capacity: ``output`` (a root output in
    #: the state, falling back to the tfvars file) or ``tfvars`` (only the file)
    read_from: Literal["output", "tfvars"] = "output"
    #: the root output that reports the capacity (default: same name as
    #: ``variable``)
    output: str | None = None
    #: run ``terraform init -input=false`` when ``.terraform`` is missing
    init: bool = True
    #: limit for each init, plan, show, apply and output run
    plan_timeout: Duration = timedelta(minutes=10)
    #: the longest one ``apply`` may take, everything in it (init, the plans
    #: and the drift check, ``terraform apply``, the read-back, retries): a
    #: Terraform run cannot return before it finishes, so this bound must be
    #: shorter than the target's cycle ``timeout`` (2m by default), checked
    #: when the config is loaded. 90s leaves a default cycle room to record
    #: its decision; raise both for a module that takes longer to apply.
    apply_timeout: Duration = timedelta(seconds=90)
    #: after a timeout terraform gets SIGINT, which makes it stop, write the
    #: state and release the lock; this long later it is killed
    interrupt_grace: Duration = timedelta(seconds=30)


    @field_validator("variable", "output")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not _IDENT.match(value):
            raise ValueError(f"{value!r} is not a Terraform identifier (letters, digits, _ and -)")
        return value

    @field_validator("binary")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name the terraform executable")
        return value

    @model_validator(mode="after")
    def _positive_timeouts(self) -> "TerraformConfig":
        for name in ("plan_timeout", "apply_timeout", "verify_timeout"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        return self

    def apply_bound(self) -> tuple[str, timedelta] | None:
        return "apply_timeout", self.apply_timeout

    @property
    def output_name(self) -> str:
        return self.output or self.variable


_MISSING = object()


class TerraformActuator:
    """Sets one variable of a Terraform workspace; see the module docstring."""

    name: ClassVar[str] = "terraform"
    capabilities: ClassVar[Capabilities] = Capabilities(needs_base_dir=True, takes_ladder=True)
    Config = TerraformConfig

    def __init__(
        self,
        config: TerraformConfig,
        *,
        target: str,
        ladder: Sequence[str] | None = None,
        sleep: Sleep = time.sleep,
        monotonic: Monotonic = time.monotonic,
        environ: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
        **injected_clients: Any,
    ) -> None:
        """``environ``: the environment terraform runs with (default: this
        process's), e.g. the backend's credentials. ``base_dir``: what a
        relative ``workspace`` is relative to (the config file's directory;
        default: the working directory)."""
        if injected_clients:
            raise TypeError(
                f"TerraformActuator takes no clients; got {', '.join(sorted(injected_clients))}"
            )
        self.config = config
        self.target = target
        self.ladder = tuple(ladder or ())
        if config.value_kind == "ladder":
            if not self.ladder:
                raise ConfigError("value_kind is 'ladder' but the target has no ladder of "
                                  "instance types", path="ladder")
            dupes = repeated(self.ladder)
            if dupes:
                raise ConfigError(f"ladder names {', '.join(dupes)} more than once", path="ladder")
        self._sleep = sleep
        self._monotonic = monotonic
        workspace = Path(config.workspace).expanduser()
        if not workspace.is_absolute() and base_dir is not None:
            workspace = Path(base_dir) / workspace
        self.workspace = workspace.absolute()
        # Terraform in automation: no prompts, no "run terraform apply next"
        # hints, no call home to checkpoint.hashicorp.com for version news.
        base = dict(os.environ if environ is None else environ)
        base.update({"TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"})
        self._initialized = False
        self._runner = TerraformRunner(config, self.workspace, base, monotonic)

    # ------------------------------------------------------------------ protocol
    def validate(self) -> None:
        """The binary runs and is recent enough, the workspace parses, declares
        the variable (and the output read() uses), and the current capacity
        can be read."""
        self._check_workspace()
        version = self._version()
        if version < MIN_TERRAFORM:
            raise PermanentActuatorError(
                f"terraform {'.'.join(map(str, version))} at {self._runner.binary()} is too old; "
                f"forescale needs {'.'.join(map(str, MIN_TERRAFORM))} or newer"
            )
        self._ensure_init()
        current = self.read().count
        with tempfile.TemporaryDirectory(prefix="forescale-tf-") as tmp:
            # -lock=false -refresh=false: a startup check reads the
            # configuration only and must not queue behind a running apply.
            plan = self._plan(Path(tmp), self._to_value(current), check_only=True)
        config = plan.document.get("configuration", {}).get("root_module", {})
        declared = sorted(config.get("variables", {}) or {})
        if self.config.variable not in declared:
            raise PermanentActuatorError(
                f"terraform workspace {self.workspace} declares no variable "
                f"{self.config.variable!r} (it declares: {', '.join(declared) or 'none'})"
            )
        if self.config.read_from == "output":
            outputs = sorted(config.get("outputs", {}) or {})
            if self.config.output_name not in outputs:
                raise PermanentActuatorError(
                    f"terraform workspace {self.workspace} declares no output "
                    f"{self.config.output_name!r} to read the capacity from "
                    f"(it declares: {', '.join(outputs) or 'none'}); set output: or read_from: tfvars"
                )

    def read(self) -> CapacityReading:
        """``count`` = the applied value (from the state's output, else the
        tfvars file); ``ready`` is None: Terraform does not tell whether the
        resources serve."""
        return CapacityReading(count=self._retry(self._read_once), ready=None,
                               details={"workspace": str(self.workspace), "variable": self.config.variable})

    def _retry(self, fn: Any) -> Any:
        return self.config.retry(fn, sleep=self._sleep)

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        """Plan ``desired`` with ``-var-file`` (which outranks the tfvars file),
        so nothing in the workspace or the state changes."""
        require_non_negative(desired)
        value = self._to_value(desired)

        def once() -> tuple[_Plan, str, list[Change], int | None]:
            self._check_workspace()
            self._ensure_init()
            with tempfile.TemporaryDirectory(prefix="forescale-tf-") as tmp:
                plan = self._plan(Path(tmp), value)
                now = current if current is not None else \
                    self._capacity_in(plan.document, self._read_tfvars())
                text = redact_sensitive(self._show_text(plan.path), plan.document)
                # with the current capacity unknown there is no baseline to
                # tell drift by; apply would refuse, and says so itself
                drift = [] if now is None else self._drift(Path(tmp), plan, desired, now)
                return plan, text, drift, now

        plan, text, drift, observed = self._retry(once)
        from_value = None if observed is None else self._to_value_or_none(observed)
        changes = plan.changes
        counts = count_actions(changes)
        head = (f"terraform {self.workspace.name}: var.{self.config.variable} "
                f"{_show(from_value)} -> {_show(value)}")
        if not changes:
            summary = f"{head}: no changes"
        else:
            summary = (f"{head}: {counts['add']} to add, {counts['change']} to change, "
                       f"{counts['destroy']} to destroy")
        if drift:
            summary += ("; apply would be refused, changes not driven by "
                        f"var.{self.config.variable}: {', '.join(map(str, drift))}")
        return ActionPlan(
            actuator=self.name,
            target=self.target,
            from_capacity=observed,
            to_capacity=desired,
            summary=summary,
            details={
                "plan_text": text,
                "workspace": str(self.workspace),
                "variable": self.config.variable,
                "value": value,
                "from_value": from_value,
                "changes": [c.to_dict() for c in changes],
                "counts": counts,
                "drift": [c.to_dict() for c in drift],
                "terraform_version": plan.document.get("terraform_version"),
            },
        )

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        """Plan, check and apply the value, all within ``apply_timeout``.

        Terraform's apply is synchronous: when it returns, the providers
        accepted every change and the state holds the new value, so one
        read-back verifies (there is nothing to poll)."""
        require_non_negative(desired)
        value = self._to_value(desired)
        started = self._monotonic()
        self._runner.deadline = started + self.config.apply_timeout.total_seconds()
        try:
            outcome = self._retry(lambda: self._apply_once(desired, value))
            observed = self._retry(self._read_once)
        finally:
            self._runner.deadline = None
        elapsed = timedelta(seconds=max(0.0, self._monotonic() - started))
        verified = observed == desired
        if not verified:
            logger.warning("terraform %s: applied var.%s=%s but read back capacity %d, not %d",
                           self.workspace, self.config.variable, _show(value), observed, desired)
        return ActuationResult(
            requested=desired,
            observed=observed,
            verified=verified,
            elapsed=elapsed,
            request_ids=outcome["request_ids"],
            details={
                "decision_id": decision_id,
                "target": desired,
                "workspace": str(self.workspace),
                "variable": self.config.variable,
                "value": value,
                "applied": outcome["applied"],
                "changes": [c.to_dict() for c in outcome["changes"]],
            },
        )

    # ------------------------------------------------------------------ apply
    def _apply_once(self, desired: int, value: Any) -> dict[str, Any]:
        self._check_workspace()
        self._ensure_init()
        tfvars_before = self._read_tfvars()
        previous = self._write_tfvars(value)
        try:
            with tempfile.TemporaryDirectory(prefix="forescale-tf-") as tmp:
                plan = self._plan(Path(tmp), None)
                self._check_value_took(plan, desired)
                if not plan.has_changes:
                    logger.info("terraform %s: var.%s=%s, no changes to apply",
                                self.workspace, self.config.variable, _show(value))
                    return {"applied": False, "changes": [], "request_ids": ()}
                current = None if self.config.allow_drift else \
                    self._capacity_in(plan.document, tfvars_before)
                drift = self._drift(Path(tmp), plan, desired, current)
                if drift:
                    tainted = [c.address for c in drift if c.tainted]
                    hint = (f"; {', '.join(tainted)} {'is' if len(tainted) == 1 else 'are'} tainted (an apply "
                            "interrupted before it finished?): run terraform apply in the workspace, or "
                            f"terraform untaint {tainted[0]}" if tainted else "")
                    raise PermanentActuatorError(
                        f"terraform workspace {self.workspace} has changes not driven by "
                        f"var.{self.config.variable}: {', '.join(map(str, drift))}; refusing to "
                        "apply them with the capacity change (apply or revert them yourself, "
                        "or set allow_drift: true)" + hint
                    )
                changes = plan.changes
                digest = hashlib.sha256(plan.path.read_bytes()).hexdigest()[:16]
                logger.info("terraform %s: applying var.%s=%s (plan %s): %s",
                            self.workspace, self.config.variable, _show(value), digest,
                            ", ".join(map(str, changes)))
                self._apply_plan(plan.path)
                return {"applied": True, "changes": changes,
                        "request_ids": (f"terraform-plan:sha256:{digest}",)}
        except BaseException:
            self._restore_tfvars(previous)
            raise

    def _drift(self, tmp: Path, plan: _Plan, desired: int, current: int | None) -> list[Change]:
        """Changes of ``plan`` that are not caused by moving the capacity from
        ``current`` to ``desired``: everything a plan with the value left at
        ``current`` would still change. Empty when drift is allowed."""
        if self.config.allow_drift or not plan.has_changes:
            return []
        if current == desired:
            return plan.changes
        if current is None:
            raise PermanentActuatorError(
                f"cannot tell drift from the capacity change in {self.workspace}: the current "
                f"capacity is unknown; apply the workspace once with var.{self.config.variable} "
                "set, or set allow_drift: true"
            )
        baseline = self._plan(tmp, self._to_value(current), name="baseline")
        return baseline.changes if baseline.has_changes else []

    def _check_value_took(self, plan: _Plan, desired: int) -> None:
        """Another ``*.auto.tfvars`` file sorting after ours, or ``-var`` in
        TF_CLI_ARGS, would override forescale's value without a word."""
        variables = plan.document.get("variables") or {}
        if self.config.variable not in variables:
            raise PermanentActuatorError(
                f"terraform workspace {self.workspace} declares no variable "
                f"{self.config.variable!r} (it declares: {', '.join(sorted(variables)) or 'none'})"
            )
        planned = (variables[self.config.variable] or {}).get("value")
        if planned is None or self._to_capacity_or_none(planned) != desired:
            raise PermanentActuatorError(
                f"terraform plan in {self.workspace} used var.{self.config.variable} = "
                f"{_show(planned)}, not forescale's {_show(self._to_value(desired))}: another "
                f"variable file that takes precedence over {TFVARS_FILE} sets it"
            )

    # ------------------------------------------------------------------ reading
    def _read_once(self) -> int:
        self._check_workspace()
        self._ensure_init()
        value = _MISSING
        if self.config.read_from == "output":
            value = self._output_value(self.config.output_name)
        capacity = self._capacity_from(value, self._read_tfvars())
        if capacity is not None:
            return capacity
        where = (f"output {self.config.output_name!r} is not in the state and "
                 if self.config.read_from == "output" else "")
        raise PermanentActuatorError(
            f"cannot read the current capacity of terraform workspace {self.workspace}: "
            f"{where}{TFVARS_FILE} does not set {self.config.variable!r}; apply the workspace "
            "once with the starting value"
        )

    def _capacity_from(self, output_value: Any, tfvars: Mapping[str, Any]) -> int | None:
        """read()'s rule: the output when it is in the state, else the tfvars
        file; None when neither says."""
        if output_value is not _MISSING:
            return self._to_capacity(output_value, f"output {self.config.output_name!r}")
        if self.config.variable in tfvars:
            return self._to_capacity(tfvars[self.config.variable],
                                     f"{TFVARS_FILE} variable {self.config.variable!r}")
        return None

    def _capacity_in(self, document: Mapping[str, Any], tfvars: Mapping[str, Any]) -> int | None:
        """The current capacity by read()'s rule, taken from a plan's prior
        state (refreshed by that plan) instead of one more ``terraform output``."""
        value = _MISSING
        if self.config.read_from == "output":
            outputs = ((document.get("prior_state") or {}).get("values") or {}).get("outputs") or {}
            if self.config.output_name in outputs:
                value = outputs[self.config.output_name].get("value")
        return self._capacity_from(value, tfvars)

    def _output_value(self, name: str) -> Any:
        run = self._runner.run(["output", "-no-color", "-json", name],
                        timeout=self.config.plan_timeout, what="output")
        if run.returncode != 0:
            if f'Output "{name}" not found' in run.stderr:
                return _MISSING
            raise self._runner.error("output", run)
        try:
            return json.loads(run.stdout)
        except json.JSONDecodeError as exc:
            raise PermanentActuatorError(
                f"terraform output {name!r} in {self.workspace} is not JSON: {exc}") from exc

    def _to_capacity(self, value: Any, source: str) -> int:
        if self.config.value_kind == "ladder":
            if isinstance(value, str) and value in self.ladder:
                return self.ladder.index(value)
            raise PermanentActuatorError(
                f"terraform {source} is {_show(value)}, which is not in the ladder "
                f"({', '.join(self.ladder)})"
            )
        number: float | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None or not math.isfinite(number) or number != int(number) or number < 0:
            raise PermanentActuatorError(
                f"terraform {source} is {_show(value)}, not a whole number >= 0")
        return int(number)

    def _to_capacity_or_none(self, value: Any) -> int | None:
        try:
            return self._to_capacity(value, "value")
        except PermanentActuatorError:
            return None

    def _to_value(self, capacity: int) -> Any:
        if self.config.value_kind == "number":
            return int(capacity)
        if not 0 <= capacity < len(self.ladder):
            raise LimitExceeded(
                f"capacity {capacity} is outside the ladder of {self.target or 'the target'} "
                f"(0..{len(self.ladder) - 1}: {', '.join(self.ladder)})"
            )
        return self.ladder[capacity]

    def _to_value_or_none(self, capacity: int) -> Any:
        try:
            return self._to_value(capacity)
        except LimitExceeded:
            return None

    # ------------------------------------------------------------------ tfvars file
    @property
    def tfvars_path(self) -> Path:
        return self.workspace / TFVARS_FILE

    def _read_tfvars(self) -> dict[str, Any]:
        try:
            raw = self.tfvars_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PermanentActuatorError(f"{self.tfvars_path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise PermanentActuatorError(f"{self.tfvars_path} must hold a JSON object")
        return data

    def _write_tfvars(self, value: Any) -> bytes | None:
        """Set our variable in the tfvars file (other keys kept); return the
        previous content (None: there was no file) for :meth:`_restore_tfvars`."""
        try:
            previous: bytes | None = self.tfvars_path.read_bytes()
        except FileNotFoundError:
            previous = None
        data = self._read_tfvars()
        data[self.config.variable] = value
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        self._atomic_write(text.encode("utf-8"))
        return previous

    def _restore_tfvars(self, previous: bytes | None) -> None:
        try:
            if previous is None:
                self.tfvars_path.unlink(missing_ok=True)
            else:
                self._atomic_write(previous)
        except OSError as exc:  # the original error matters more; say what is left
            logger.error("could not restore %s after a failed apply: %s", self.tfvars_path, exc)

    def _atomic_write(self, content: bytes) -> None:
        # The temp name must not end in .tf/.tfvars: terraform would load it.
        fd, tmp = tempfile.mkstemp(dir=self.workspace, prefix=".forescale-tfvars-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.tfvars_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:
            dir_fd = os.open(self.workspace, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    # ------------------------------------------------------------------ terraform
    def _check_workspace(self) -> None:
        if not self.workspace.is_dir():
            raise PermanentActuatorError(
                f"terraform workspace {self.workspace} does not exist or is not a directory")
        if not any(self.workspace.glob("*.tf")) and not any(self.workspace.glob("*.tf.json")):
            raise PermanentActuatorError(
                f"terraform workspace {self.workspace} has no .tf or .tf.json files")

    def _ensure_init(self) -> None:
        if not self.config.init or self._initialized:
            return
        if not (self.workspace / ".terraform").is_dir():
            # A workspace with only built-in providers and the local backend
            # creates no .terraform, so remember that init ran in this process.
            run = self._runner.run(["init", "-input=false", "-no-color"],
                            timeout=self.config.plan_timeout, what="init")
            if run.returncode != 0:
                raise self._runner.error("init", run)
        self._initialized = True

    def _plan(self, tmp: Path, value: Any, *, name: str = "capacity",
              check_only: bool = False) -> _Plan:
        """Plan into ``tmp``. ``value`` None: the workspace's own variables
        (our tfvars file included); else the variable is set with a
        ``-var-file``, which outranks every ``*.auto.tfvars`` file."""
        planfile = tmp / f"{name}.tfplan"
        args = ["plan", "-input=false", "-no-color", "-json", "-detailed-exitcode",
                f"-out={planfile}"]
        if check_only:
            args += ["-lock=false", "-refresh=false"]
        else:
            args.append(f"-lock-timeout={_go_duration(self.config.lock_timeout)}")
        if value is not None:
            var_file = tmp / f"{name}.tfvars.json"
            var_file.write_text(json.dumps({self.config.variable: value}), encoding="utf-8")
            args.append(f"-var-file={var_file}")
        run = self._runner.run(args, timeout=self.config.plan_timeout, what="plan")
        if run.returncode not in (0, 2):
            raise self._runner.error("plan", run)
        return _Plan(planfile, run.returncode == 2, self._show_json(planfile))

    def _show_json(self, planfile: Path) -> dict[str, Any]:
        run = self._runner.run(["show", "-no-color", "-json", str(planfile)],
                        timeout=self.config.plan_timeout, what="show")
        if run.returncode != 0:
            raise self._runner.error("show", run)
        try:
            return json.loads(run.stdout)
        except json.JSONDecodeError as exc:
            raise PermanentActuatorError(f"terraform show -json printed no JSON: {exc}") from exc

    def _show_text(self, planfile: Path) -> str:
        run = self._runner.run(["show", "-no-color", str(planfile)],
                        timeout=self.config.plan_timeout, what="show")
        if run.returncode != 0:
            raise self._runner.error("show", run)
        return run.stdout.strip()

    def _apply_plan(self, planfile: Path) -> None:
        run = self._runner.run(["apply", "-input=false", "-no-color", "-json",
                         f"-lock-timeout={_go_duration(self.config.lock_timeout)}", str(planfile)],
                        timeout=self.config.plan_timeout, what="apply")
        if run.returncode != 0:
            raise self._runner.error("apply", run)

    def _version(self) -> tuple[int, ...]:
        run = self._runner.run(["version", "-json"], timeout=self.config.plan_timeout, what="version")
        if run.returncode != 0:
            raise self._runner.error("version", run)
        try:
            text = json.loads(run.stdout)["terraform_version"]
            return tuple(int(p) for p in re.findall(r"\d+", text)[:3])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PermanentActuatorError(
                f"{self._runner.binary()} version -json printed no terraform_version; is it terraform?"
            ) from exc
