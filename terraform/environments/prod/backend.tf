# State in a GCS bucket made once per organisation (docs/deploy.md):
#   terraform init -backend-config="bucket=<state bucket>"
terraform {
  backend "gcs" {
    prefix = "aia/prod"
  }
}
