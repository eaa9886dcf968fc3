variable "project_id" {
  description = "Project that holds the function."
  type        = string
}

variable "region" {
  description = "Region of the function (and of its Cloud Run service)."
  type        = string
}

variable "name" {
  description = "Function name: the folder under functions/ and the Python entry point."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{1,40}[a-z0-9]$", var.name))
    error_message = "name must be a lowercase Python identifier of 3 to 42 characters."
  }
}

variable "description" {
  description = "What the function does, shown in the console."
  type        = string
}

variable "service_account_email" {
  description = "Email of the service account the function runs as."
  type        = string
}

variable "source_bucket" {
  description = "Bucket that receives the bundle zip."
  type        = string
}

variable "source_archive" {
  description = "Path of the bundle zip built by `make package` (build/<name>.zip)."
  type        = string
}

variable "build_service_account" {
  description = "Full resource name of the service account Cloud Build uses to build the function."
  type        = string
}

variable "runtime" {
  description = "Cloud Functions runtime."
  type        = string
  default     = "python311"

  validation {
    condition     = contains(["python311", "python312", "python313"], var.runtime)
    error_message = "runtime must be python311, python312 or python313."
  }
}

variable "memory" {
  description = "Memory per instance, e.g. 256Mi."
  type        = string
  default     = "256Mi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.memory))
    error_message = "memory must look like 256Mi or 1Gi."
  }
}

variable "cpu" {
  description = "vCPUs per instance, as a string (\"0.167\", \"1\", \"2\")."
  type        = string
  default     = "1"
}

variable "timeout_seconds" {
  description = "Request timeout in seconds (HTTP functions: at most 3600)."
  type        = number
  default     = 60

  validation {
    condition     = var.timeout_seconds >= 1 && var.timeout_seconds <= 3600
    error_message = "timeout_seconds must be between 1 and 3600."
  }
}

variable "min_instances" {
  description = "Instances kept warm (0 scales to zero)."
  type        = number
  default     = 0

  validation {
    condition     = var.min_instances >= 0
    error_message = "min_instances must not be negative."
  }
}

variable "max_instances" {
  description = "Upper bound on instances."
  type        = number
  default     = 10

  validation {
    condition     = var.max_instances >= 1
    error_message = "max_instances must be at least 1."
  }
}

variable "concurrency" {
  description = "Requests one instance serves at once (more than 1 needs at least 1 vCPU)."
  type        = number
  default     = 1

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 1000
    error_message = "concurrency must be between 1 and 1000."
  }
}

variable "ingress" {
  description = "Who may reach the function's URL."
  type        = string
  default     = "ALLOW_INTERNAL_ONLY"

  validation {
    condition     = contains(["ALLOW_ALL", "ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.ingress)
    error_message = "ingress must be ALLOW_ALL, ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  }
}

variable "environment_variables" {
  description = "Plain environment variables (never secrets)."
  type        = map(string)
  default     = {}
}

variable "secret_environment_variables" {
  description = "Environment variable name => Secret Manager secret id; the function reads its latest version."
  type        = map(string)
  default     = {}
}

variable "invoker_members" {
  description = "Key => IAM member allowed to invoke the function (roles/run.invoker on its service). Keys must be known at plan time; members may be computed."
  type        = map(string)
  default     = {}
}

variable "labels" {
  description = "Labels on the function."
  type        = map(string)
  default     = {}
}
