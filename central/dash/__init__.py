"""The operators' dashboard: login, fleet overview, office and incident pages, live updates (SSE).

Server-rendered with the shared Jinja2 environment and message catalogs of :mod:`central.web`;
every write goes through the JSON API (central/api.py) with the session's CSRF token.
"""
