output "function_uris" {
  description = "Function name => HTTPS URL."
  value       = { for name, fn in module.function : name => fn.uri }
}

output "function_service_accounts" {
  description = "Function name => email of the service account it runs as."
  value       = { for name, sa in google_service_account.function : name => sa.email }
}

output "base_url" {
  description = "One base URL for /health, /metrics and /tasks (the load balancer), or null without it."
  value       = var.load_balancer.enabled ? "https://${var.load_balancer.domains[0]}" : null
}

output "load_balancer_ip" {
  description = "Address to point the domains' DNS A records at, or null without the load balancer."
  value       = var.load_balancer.enabled ? module.gateway[0].ip_address : null
}

output "tasks_topic" {
  description = "Full id of the tasks topic."
  value       = google_pubsub_topic.tasks.id
}

output "dead_letter_subscription" {
  description = "Full id of the subscription that holds dead-lettered tasks."
  value       = google_pubsub_subscription.dead_letter_hold.id
}

output "keyring_secrets" {
  description = "Key ring => Secret Manager secret id; add the key material as versions of these."
  value       = { for ring, secret in google_secret_manager_secret.keyring : ring => secret.secret_id }
}

output "metrics_token_secret" {
  description = "Secret Manager secret id to add the metrics bearer token to (docs/deploy.md)."
  value       = google_secret_manager_secret.metrics_token.secret_id
}

output "backstop_subscription" {
  description = "Full id of the subscription that redelivers what the worker subscription gave up on."
  value       = google_pubsub_subscription.backstop_push.id
}

output "source_bucket" {
  description = "Bucket holding the uploaded bundles."
  value       = google_storage_bucket.sources.name
}

output "firestore_database" {
  description = "Id of the Firestore database holding the tasks (AIA_FIRESTORE_DATABASE)."
  value       = google_firestore_database.this.name
}

output "keys_database" {
  description = "Id of the Firestore database holding the API keys (AIA_KEYS_DATABASE)."
  value       = google_firestore_database.keys.name
}
