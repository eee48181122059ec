"""The dashboard: the page (static/), its HTTP side (http), its live stream (stream), tokens and
roles (roles), operator actions (actions), its view of storage (sync), put together by room."""
