"""The gateway's command line: ``edgewire-gateway`` (main), one module per command group, and the
admin API's client."""
