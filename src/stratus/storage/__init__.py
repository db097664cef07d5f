"""Chunk stores, manifests ingest and materialization, garbage collection and fsck.

Knows bytes and digests, never accounts or images: imports only domain and disk.
"""
