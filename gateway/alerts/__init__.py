"""The alert engine: rules evaluated on every reading, alerts with a life cycle, an event stream.

- ``rules/``: one module per rule type plus one row in ``RULE_TYPES``;
- ``lifecycle.py``: ``AlertLifecycle`` (the per-reading hot path, raise/update/suspend/resume/clear);
- ``engine.py``: ``AlertEngine`` around it (operators' requests, rule edits, start-up, timers);
- ``restore.py``: start-up, the learned state and open alerts attached through the life cycle's
  ``track_for`` and ``adopt``;
- ``model.py``: the alert's JSON shape and the events listeners receive;
- ``writer.py``: alert changes stored in order, events emitted after they are committed;
- ``rulebook.py``: rules from the config file overlaid by the admin API's, stored;
- ``admin.py``: the admin API's alert requests; ``webhook.py``: the webhook notifier.

docs/alerts.md describes the whole; its sections "Admin API" and "The event stream" are the
interface for other rooms.
"""
