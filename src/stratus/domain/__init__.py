"""Pure types and rules: ids, states and transitions, visibility, disk manifests, CVM error codes.

Knows nothing of I/O: never imports storage, disk, catalog, tasks, service, api or cli.
"""
