"""Alibaba Cloud ECS actuators, over the official SDK ``alibabacloud_ecs20140526``.

- ``alibaba-ecs`` (:class:`EcsInstanceSpecActuator`, :mod:`.spec`): vertical,
  one instance along a ladder of instance types, stepwise.
- ``alibaba-ecs-group`` (:class:`EcsInstanceGroupActuator`, :mod:`.group`):
  horizontal, the instances carrying a tag.

The SDK is imported only when a client is built, so importing this package
(and ``actuators``) stays light. A client can be handed in (``client=``);
otherwise one is built from the config and the credentials found
(:mod:`.client`, which also holds the error mapping).
"""

from .client import EcsConnectionConfig, EcsInstance, build_client, map_error
from .group import EcsInstanceGroupActuator, EcsInstanceGroupConfig
from .spec import EcsInstanceSpecActuator, EcsInstanceSpecConfig

__all__ = ["EcsConnectionConfig", "EcsInstance", "EcsInstanceGroupActuator", "EcsInstanceGroupConfig",
           "EcsInstanceSpecActuator", "EcsInstanceSpecConfig", "build_client", "map_error"]
