"""Reproductions of the framework's theoretical claims (README.md); not part of the library."""
