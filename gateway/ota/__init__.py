"""Over-the-air updates, the gateway's side (docs/ota.md): releases (manifest.py, release.py),
serving their chunks to devices (serve.py), rollouts (rollout.py) and the admin requests (admin.py)."""
