"""RAVE deploy: the project's own code (settings, components, staging harness, tools)."""
