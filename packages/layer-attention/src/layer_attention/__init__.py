"""Layer attention."""
