"""What actuators/terraform/plan.py reads from Terraform's JSON output."""

from __future__ import annotations

from actuators.terraform import count_actions, plan_changes, redact_sensitive


def test_plan_changes_skips_no_ops_and_reads_and_counts_like_terraform():
    document = {
        "resource_changes": [
            {"address": "aws_autoscaling_group.web", "change": {"actions": ["update"]}},
            {"address": "aws_instance.db", "change": {"actions": ["delete", "create"]}},
            {"address": "aws_launch_template.web", "change": {"actions": ["no-op"]}},
            {"address": "data.aws_ami.base", "change": {"actions": ["read"]}},
            {"address": "aws_s3_bucket.logs", "change": {"actions": ["no-op"],
                                                         "importing": {"id": "logs"}}},
            {"address": "aws_eip.old", "change": {"actions": ["delete"]}},
        ],
        "output_changes": {
            "unchanged": {"actions": ["no-op"]},
            "desired_capacity": {"actions": ["update"]},
        },
    }
    changes = plan_changes(document)
    assert [str(c) for c in changes] == [
        "aws_autoscaling_group.web (update)",
        "aws_instance.db (delete+create)",
        "aws_s3_bucket.logs (import)",
        "aws_eip.old (delete)",
        "output.desired_capacity (update)",
    ]
    assert count_actions(changes) == {"add": 1, "change": 1, "destroy": 2}


def test_redact_sensitive_masks_marked_values_wherever_they_appear():
    document = {
        "configuration": {"root_module": {"variables": {
            "db_password": {"sensitive": True}, "desired_capacity": {}}}},
        "variables": {"db_password": {"value": "hunter2-long"}, "desired_capacity": {"value": 3}},
        "resource_changes": [{"change": {
            "before": {"input": {"token": "old-token-1", "name": "web"}, "tags": ["a", "tag-secret"]},
            "before_sensitive": {"input": {"token": True}, "tags": [False, True]},
            "after": {"input": {"token": "new-token-2", "name": "web"}},
            "after_sensitive": {"input": True},
        }}],
        "output_changes": {"short": {"before": "abc", "before_sensitive": True}},
    }
    text = ('output = "old-token-1" -> "new-token-2"; password = "hunter2-long"; '
            'tag = "tag-secret"; name = "web"; capacity = 3; short = "abc"')
    assert redact_sensitive(text, document) == (
        'output = "(sensitive value)" -> "(sensitive value)"; password = "(sensitive value)"; '
        'tag = "(sensitive value)"; name = "web"; capacity = 3; short = "abc"')


