"""Durable tasks: claim with a lease, heartbeat, progress, resume after a crash.

Imports catalog and domain; handlers are registered by the service layer.
"""
