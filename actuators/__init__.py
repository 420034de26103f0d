"""Actuators: carry a capacity decision out on a platform.

Built-in names resolve lazily (importing ``actuators`` imports no cloud SDK);
third-party actuators register under the ``forescale.actuators`` entry-point
group.
"""

from engine.core.registry import Registry

from .base import Actuator, ActuatorConfig, PlatformCalls, check_apply_bound, retrying

registry = Registry("actuator", "forescale.actuators")
registry.add("dry-run", "actuators.dryrun:DryRunActuator")
registry.add("aws-asg", "actuators.aws:AutoScalingGroupActuator", extra="aws", packages=("boto3",))
registry.add("aws-ec2", "actuators.aws:EC2InstanceTypeActuator", extra="aws", packages=("boto3",))
registry.add("alibaba-ecs", "actuators.alibaba:EcsInstanceSpecActuator", extra="alibaba",
             packages=("alibabacloud_ecs20140526",))
registry.add("alibaba-ecs-group", "actuators.alibaba:EcsInstanceGroupActuator", extra="alibaba",
             packages=("alibabacloud_ecs20140526",))
registry.add("terraform", "actuators.terraform:TerraformActuator")
registry.add("kubernetes", "actuators.kubernetes:ScaleSubresourceActuator", extra="k8s",
             packages=("kubernetes",))
registry.add("kubernetes-hpa-floor", "actuators.kubernetes:HpaFloorActuator", extra="k8s",
             packages=("kubernetes",))


def _check(name: str, obj: object) -> None:
    from engine.core.errors import PluginError
    from engine.core.plugins import check_capabilities

    for attr in ("validate", "read", "describe", "apply", "Config"):
        if not hasattr(obj, attr):
            raise PluginError(f"actuator {name!r} ({obj!r}) lacks {attr!r}")
    check_capabilities("actuator", name, obj)


registry.add_validator(_check)

__all__ = ["Actuator", "ActuatorConfig", "PlatformCalls", "check_apply_bound", "registry", "retrying"]
