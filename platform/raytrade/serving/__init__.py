"""Ray Serve: request/response schemas, the shared decision steps, the deployments, the app builder used by
``serve_configs/``, and the one deploy module used by the CLI, jobs and pipeline."""
