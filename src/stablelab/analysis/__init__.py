"""Analysis of run directories (never of a live trainer)."""
