"""Locust load tests of the service: user classes, load shapes, thresholds and the release gate."""
