"""POST /generate: router, schemas and serving logic."""
