output "name" {
  description = "Function name."
  value       = google_cloudfunctions2_function.this.name
}

output "uri" {
  description = "The function's run.app URL (service_config.uri): what push subscriptions and Cloud Scheduler call."
  value       = google_cloudfunctions2_function.this.service_config[0].uri
}

output "service" {
  description = "The Cloud Run service that serves the function."
  value       = google_cloudfunctions2_function.this.service_config[0].service
}

output "source_object" {
  description = "Bucket object holding the deployed bundle, named by its SHA-256."
  value       = google_storage_bucket_object.source.name
}
