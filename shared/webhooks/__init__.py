"""Signed completion webhooks (Standard Webhooks): endpoints, outbox, delivery, egress."""
