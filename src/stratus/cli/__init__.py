"""The `stratus` command: serve, account administration, store maintenance and client verbs."""
