"""Evaluation: run test sets through the service over HTTP, score the outputs, write reports."""
