"""AWS actuators: Auto Scaling group capacity (``aws-asg``, :mod:`.asg`) and
an EC2 instance resized along a ladder of instance types (``aws-ec2``,
:mod:`.ec2`, stepwise).

boto3 is imported only when an actuator first needs a client, so importing
``actuators`` (or this package) never imports it. A client can be injected
(``autoscaling=``, ``ec2=``); otherwise it is created from the config
(``region``, optional ``endpoint_url`` and ``profile``) through boto3's
standard credential chain (:mod:`.session`). Errors are mapped by one table
(:mod:`.errors`).
"""

from .asg import AutoScalingGroupActuator, AutoScalingGroupConfig
from .ec2 import EC2InstanceTypeActuator, EC2InstanceTypeConfig
from .errors import LIMIT_CODES, TRANSIENT_CODES, map_aws_error
from .session import AwsConfig

__all__ = ["AutoScalingGroupActuator", "AutoScalingGroupConfig", "AwsConfig", "EC2InstanceTypeActuator",
           "EC2InstanceTypeConfig", "LIMIT_CODES", "TRANSIENT_CODES", "map_aws_error"]
