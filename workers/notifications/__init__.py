"""Notifications: an outbox table, bilingual messages and pluggable delivery channels."""
