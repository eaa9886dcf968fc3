# State of dev: gs://<state bucket>/aia/dev/ (the bucket is given at init, docs/deploy.md).
prefix = "aia/dev"
