"""The Textual terminal UI: a client of the lab, never of its internals."""
