variable "project_id" {
  description = "Project to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the functions and of Firestore."
  type        = string
  default     = "europe-west1"
}

variable "invoker_members" {
  description = "Who may call the user-facing functions, e.g. [\"user:me@example.com\"]."
  type        = list(string)
  default     = []
}
