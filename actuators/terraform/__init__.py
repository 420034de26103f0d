"""The ``terraform`` actuator: capacity as one variable of a Terraform workspace.

Capacity lives in one input variable of a root module (``desired_capacity``
of an autoscaling group, ``instance_type`` of a server). Setting it to N:

1. writes the variable into the forescale-owned ``forescale.auto.tfvars.json``
   in the workspace (atomically: temp file + rename), so a person who runs
   ``terraform plan`` by hand sees forescale's value instead of reverting it;
2. ``terraform plan -detailed-exitcode -out=<planfile>``; exit code 0 means
   nothing to change, and nothing is applied (idempotency);
3. refuses drift: it plans again with the *current* capacity. Whatever that
   plan would change is not driven by the capacity variable (someone edited
   the configuration, another tfvars file, or the real infrastructure) and is
   not forescale's to apply. The addresses are named in a
   :class:`PermanentActuatorError` unless ``allow_drift`` is set. Comparing
   against a plan with the unchanged value catches drift through locals,
   modules and functions, which the reference lists in ``show -json``'s
   ``configuration`` section cannot follow;
4. ``terraform apply <planfile>``: exactly the plan that was checked;
5. reads the capacity back (``terraform output -json <output>`` from the
   state, else the tfvars file).

A Terraform run cannot hand back before it finishes, so ``apply`` is the one
actuator call that blocks: everything in it (init, both plans, the apply, the
read-back and the retries) shares one deadline, ``apply_timeout`` (90s),
which the config loader requires to be shorter than the target's cycle
``timeout`` (:func:`actuators.base.check_apply_bound`). When ``terraform
apply`` returns the providers have accepted the change and the state holds
it, so the result is verified at once.

If any step fails the tfvars file is put back as it was, so it always holds
the value of the last successful apply. Runs are serialized by Terraform's own
state lock (``-lock-timeout``); failing to get the lock, or a saved plan gone
stale because another run wrote the state, is a TransientActuatorError and the
whole plan-check-apply sequence is retried within ``retry_attempts`` /
``retry_max_wait``.
Anything else Terraform reports (syntax errors, a value the variable's type
rejects) is a PermanentActuatorError carrying Terraform's error text; a value
refused by a ``validation`` rule of the capacity variable is LimitExceeded.

Plans and applies run with ``-json``, so errors are read from Terraform's
structured diagnostics rather than from its prose. Terraform's stdout is never
logged (it can hold values of the infrastructure); the human-readable plan,
in which Terraform masks sensitive values, is returned by :meth:`describe`.

Modules: :mod:`.actuator` (the config, the flow, the tfvars file),
:mod:`.runner` (the runs of the binary, their timeouts and errors),
:mod:`.plan` (what is read from Terraform's JSON output).
"""

from .actuator import MIN_TERRAFORM, TFVARS_FILE, TerraformActuator, TerraformConfig
from .plan import Change, count_actions, plan_changes, redact_sensitive

__all__ = ["Change", "MIN_TERRAFORM", "TFVARS_FILE", "TerraformActuator", "TerraformConfig", "count_actions",
           "plan_changes", "redact_sensitive"]
