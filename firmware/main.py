"""Start the node. Stop it from the REPL with Ctrl-C; edit /config.json to reconfigure.

Never updated over the air, like boot.py: an app on trial that fails to start resets the
board here, so that boot.py counts the failed boot and falls back after three.
"""

import sys

try:
    import app

    app.main()
except Exception as err:
    sys.print_exception(err)
    import slots

    if slots.trial is not None:
        print("ota: the app on trial failed to start: reset")
        import machine

        machine.reset()
