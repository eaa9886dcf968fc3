# State of prod: gs://<state bucket>/aia/prod/ (the bucket is given at init, docs/deploy.md).
prefix = "aia/prod"
