variable "project_id" {
  description = "Project of the load balancer."
  type        = string
}

variable "region" {
  description = "Region of the functions behind the serverless NEGs."
  type        = string
}

variable "name" {
  description = "Prefix of the load balancer's resource names."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,40}$", var.name))
    error_message = "name must be lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "domains" {
  description = "Domains of the Google-managed certificate; their DNS must point at ip_address."
  type        = list(string)

  validation {
    condition     = length(var.domains) > 0
    error_message = "Give at least one domain."
  }
}

variable "services" {
  description = "Cloud Run service (name or full id) behind each function of the public API."
  type = object({
    health      = string
    metrics     = string
    submit_task = string
    task_status = string
    schedules   = string
    openapi     = string
    dashboard   = string
    webhooks    = string
    usage       = string
    workflows   = string
  })
}
