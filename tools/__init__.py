"""Build and deploy tooling: bundles (`python -m tools.package`) and offline Terraform checks."""
