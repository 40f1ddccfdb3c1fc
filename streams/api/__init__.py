"""HTTP: the distributor and operator API, tokens, status views, report forwarding, the dashboard."""
