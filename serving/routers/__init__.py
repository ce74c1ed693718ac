"""HTTP routes: each handler validates, calls a service, and shapes the response."""
