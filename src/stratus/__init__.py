"""Stratus: a self-hostable cloud image service, wire-compatible with Tencent Cloud CVM (2017-03-12)."""

__version__ = "0.1.0"
