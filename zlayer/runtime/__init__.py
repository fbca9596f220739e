"""Container runtimes (see ARCHITECTURE.md)."""
