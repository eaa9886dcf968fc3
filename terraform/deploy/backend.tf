# Partial configuration: each environment's state prefix is in
# ../environments/<env>/backend.hcl and the bucket is given at init:
#   terraform init -reconfigure -backend-config=../environments/<env>/backend.hcl \
#     -backend-config="bucket=<state bucket>"
terraform {
  backend "gcs" {}
}
