output "ip_address" {
  description = "The load balancer's IPv4 address (point the domains' A records here)."
  value       = google_compute_global_address.this.address
}

output "url_map" {
  description = "Id of the URL map holding the routes."
  value       = google_compute_url_map.this.id
}

output "backend_services" {
  description = "Function name => backend service id."
  value       = { for name, backend in google_compute_backend_service.this : name => backend.id }
}
