output "function_uris" {
  description = "Function name => HTTPS URL."
  value       = module.aia.function_uris
}

output "base_url" {
  description = "The load balancer's base URL, or null without it."
  value       = module.aia.base_url
}

output "load_balancer_ip" {
  description = "Address for the domains' DNS records, or null without the load balancer."
  value       = module.aia.load_balancer_ip
}

output "keyring_secrets" {
  description = "Secrets to add the key rings to (docs/deploy.md)."
  value       = module.aia.keyring_secrets
}

output "metrics_token_secret" {
  description = "Secret to add the metrics bearer token to (docs/deploy.md)."
  value       = module.aia.metrics_token_secret
}

output "keys_database" {
  description = "Firestore database of the API keys: where `aia keys create` writes (AIA_KEYS_DATABASE)."
  value       = module.aia.keys_database
}

output "firestore_database" {
  description = "Firestore database of the tasks (AIA_FIRESTORE_DATABASE)."
  value       = module.aia.firestore_database
}

output "dead_letter_subscription" {
  description = "Subscription holding dead-lettered tasks."
  value       = module.aia.dead_letter_subscription
}

output "source_bucket" {
  description = "Bucket holding the uploaded bundles."
  value       = module.aia.source_bucket
}
