"""allmende_cli."""
