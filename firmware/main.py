"""Start the node. Stop it from the REPL with Ctrl-C; edit /config.json to reconfigure."""

import app

app.main()
