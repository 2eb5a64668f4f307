"""allmende_node."""
