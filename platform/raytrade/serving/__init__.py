"""Ray Serve: request/response schemas, deployments and the application builder."""
