"""Serving a bank over HTTP and running batch predictions on Ray (`adapterbank serve`, `predict --engine ray`)."""
