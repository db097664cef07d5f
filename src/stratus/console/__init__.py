"""The web console: static files served at /console/ by `stratus serve` (see docs/console.md)."""
