"""Pure model code: torch only, no I/O."""
