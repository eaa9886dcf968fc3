output "function_uris" {
  description = "Function name => HTTPS URL."
  value       = module.aia.function_uris
}
