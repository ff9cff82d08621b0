"""Reports from a run store: the live console view and report.md."""
