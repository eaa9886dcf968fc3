# State of staging: gs://<state bucket>/aia/staging/ (the bucket is given at init, docs/deploy.md).
prefix = "aia/staging"
