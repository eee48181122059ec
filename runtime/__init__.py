"""Process runtime helpers shared by the gateway and the Pi agent (systemd notification)."""
