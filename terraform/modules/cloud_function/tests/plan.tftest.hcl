# Plan-mode runs; the runner passes -var source_archive=<a zip>.

variables {
  project_id            = "aia-test-project"
  region                = "europe-west1"
  name                  = "process_task"
  description           = "test"
  service_account_email = "fn@aia-test-project.iam.gserviceaccount.com"
  build_service_account = "projects/aia-test-project/serviceAccounts/b@aia-test-project.iam.gserviceaccount.com"
  source_bucket         = "aia-test-sources"
}

run "entry_point_is_the_name" {
  command = plan

  assert {
    condition     = google_cloudfunctions2_function.this.build_config[0].entry_point == "process_task"
    error_message = "The entry point is the function (folder) name."
  }

  assert {
    condition     = google_storage_bucket_object.source.name == "functions/process_task/${filesha256(var.source_archive)}.zip"
    error_message = "The bundle object is named by its content hash."
  }

  assert {
    condition     = google_cloudfunctions2_function.this.build_config[0].source[0].storage_source[0].object == google_storage_bucket_object.source.name
    error_message = "The function deploys the uploaded bundle."
  }

  assert {
    condition     = google_cloudfunctions2_function.this.service_config[0].ingress_settings == "ALLOW_INTERNAL_ONLY"
    error_message = "Ingress defaults to internal only."
  }

  assert {
    condition     = length(google_cloud_run_v2_service_iam_member.invoker) == 0
    error_message = "No invokers unless given."
  }
}

run "secrets_and_invokers" {
  command = plan

  variables {
    secret_environment_variables = { AIA_KEYRING = "aia-keyring-private" }
    invoker_members              = { pubsub_push = "serviceAccount:push@aia-test-project.iam.gserviceaccount.com" }
  }

  assert {
    condition     = google_cloudfunctions2_function.this.service_config[0].secret_environment_variables[0].key == "AIA_KEYRING" && google_cloudfunctions2_function.this.service_config[0].secret_environment_variables[0].version == "latest"
    error_message = "Secrets are read as the latest version."
  }

  assert {
    condition     = google_cloud_run_v2_service_iam_member.invoker["pubsub_push"].role == "roles/run.invoker"
    error_message = "Invokers get roles/run.invoker."
  }
}

run "rejects_bad_name" {
  command = plan

  variables {
    name = "Process-Task"
  }

  expect_failures = [var.name]
}

run "rejects_unknown_ingress" {
  command = plan

  variables {
    ingress = "EVERYONE"
  }

  expect_failures = [var.ingress]
}
