variable "project_id" {
  description = "Project of this environment."
  type        = string
}

variable "region" {
  description = "Region of the functions."
  type        = string
}

variable "environment" {
  description = "dev, staging or prod: the folder under ../environments/ whose files were given."
  type        = string
}

variable "firestore_location" {
  description = "Firestore location (multi-region such as eur3 or nam5, or a region)."
  type        = string
}

variable "bundle_dir" {
  description = "Folder with the bundles from `make package`; null means build/ at the repository root."
  type        = string
  default     = null
}

variable "app_version" {
  description = "Version the functions report: CI passes the commit (-var app_version=...)."
  type        = string
  default     = "dev"
}

variable "delete_protection" {
  description = "Protect Firestore and the source bucket from deletion."
  type        = bool
}

variable "point_in_time_recovery" {
  description = "Firestore point-in-time recovery."
  type        = bool
}

variable "scaling" {
  description = "Per-function min/max instances, memory, cpu and concurrency overrides."
  type = map(object({
    min_instances = optional(number)
    max_instances = optional(number)
    memory        = optional(string)
    cpu           = optional(string)
    concurrency   = optional(number)
  }))
  default = {}
}

variable "public_access" {
  description = "Let anyone invoke the user-facing functions (they check API keys themselves)."
  type        = bool
  default     = false
}

variable "invoker_members" {
  description = "IAM members allowed to invoke the user-facing functions when public_access is off."
  type        = list(string)
  default     = []
}

variable "load_balancer" {
  description = "Optional HTTPS load balancer: enabled and its domains."
  type = object({
    enabled = bool
    domains = optional(list(string), [])
  })
  default = { enabled = false }
}

variable "log_level" {
  description = "DEBUG, INFO, WARNING or ERROR."
  type        = string
  default     = "INFO"
}

variable "diagnostic_tasks" {
  description = "Accept the diagnostic fail task type."
  type        = bool
  default     = false
}

variable "max_delivery_attempts" {
  description = "Push deliveries before Pub/Sub dead-letters a message."
  type        = number
  default     = 10
}

variable "task_retention_days" {
  description = "Days finished tasks are kept."
  type        = number
  default     = 30
}

variable "notification_channels" {
  description = "Monitoring notification channel ids for the alerts."
  type        = list(string)
  default     = []
}
