"""Reports from a run store: the live console view, and report.html, report.md and summary.json
(one data model, ``fedaudit.report.data``); sweep.html for a sweep."""
