"""HTTP API: one router per resource, schemas beside each router."""
