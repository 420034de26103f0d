# A workspace forescale can drive: one input variable holds the capacity, one
# output reports the capacity that is applied.
#
# terraform_data (built into Terraform) stands in for the real resource, so you
# can try forescale against this directory without a cloud account or a
# provider download. docs/actuators/terraform.md shows the same shape around an AWS Auto Scaling
# group.

terraform {
  required_version = ">= 1.4"
}

variable "desired_capacity" {
  type        = number
  description = "Instances in service. Set by forescale in forescale.auto.tfvars.json."

  # Terraform refuses values outside the group's limits before anything is
  # planned; forescale reports such a refusal as LimitExceeded.
  validation {
    condition     = var.desired_capacity >= 1 && var.desired_capacity <= 20
    error_message = "The desired_capacity must be between 1 and 20 (the group's min_size and max_size)."
  }
}

resource "terraform_data" "web" {
  input = {
    desired_capacity = var.desired_capacity
    min_size         = 1
    max_size         = 20
  }
}

# forescale reads the current capacity from here (read_from: output).
output "desired_capacity" {
  value = terraform_data.web.output.desired_capacity
}
