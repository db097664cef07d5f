"""Disk formats: inspection of untrusted files (oslo.utils format_inspector) and qemu-img under limits.

Fails closed: anything the inspector can't vouch for is refused. Imports only domain.
"""
