"""The HTMX UI: page and fragment routes, templates/ and static/ (see the web UI issue)."""
