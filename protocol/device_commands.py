"""DeviceSession's commands (docs/protocol.md section 8), a mixin of protocol/device.py: the
arguments checked against wire.COMMANDS (one row per command: a new command is a new row there and
a handler in the driver), the driver's handler run, the answer built and kept for a repeated id.
MicroPython-safe like wire.py.
"""

from protocol.decisions import (
    D_COMMAND,
    D_INVALID,
    D_NOTE,
    D_OTA_CHUNK,
    REPEAT_MAX_BYTES,
    REPEATED,
    REPEATS_KEPT,
    Decision,
)
from protocol.wire import (
    COMMANDS,
    E_BAD_FRAME,
    T_RESULT,
    ProtocolError,
    parse_command,
)


class _Commands:
    """DeviceSession's commands (docs/protocol.md section 8): arguments checked against
    wire.COMMANDS, the driver's handler run, the answer built and kept for a repeated id."""

    def _on_cmd(self, msg):
        command_id = msg.get("id")
        name = msg.get("name")
        label = name[:32] if type(name) is str else None
        if type(command_id) is not str or not command_id:
            return Decision(D_INVALID, code=E_BAD_FRAME, message="command without a string id ignored", name=label)
        for entry in self.answered:
            if entry[0] == command_id:
                return Decision(D_COMMAND, reply=entry[1], name=label, ok=False, code=REPEATED,
                                message="command " + command_id[:24] + " answered before: answer sent again, not run")
        if not self.policy.run_commands:
            ok, text, data = True, "not run (load generator)", None
        else:
            ok, text, data = self.run_command(name, msg.get("args"))
        reply = self.result_frame(command_id, ok, text, data)
        self._remember(command_id, ok, text, reply)
        return Decision(D_COMMAND, reply=reply, name=label, ok=ok, message=text)

    def _remember(self, command_id, ok, text, reply):
        if len(reply) > REPEAT_MAX_BYTES:
            reply = self.result_frame(command_id, ok, text)
        answered = self.answered
        answered.append((command_id, reply))
        if len(answered) > REPEATS_KEPT:
            answered.pop(0)

    def run_command(self, name, args):
        """Validate ``args`` for command ``name`` and run the driver's handler: (ok, message, data)."""
        handlers = self.handlers
        known = ", ".join(sorted(handlers))
        if type(name) is not str or name not in COMMANDS:
            return False, "unknown command '" + str(name)[:32] + "'; known: " + known, None
        handler = handlers.get(name)
        if handler is None:
            return False, name + " is not supported by this device; known: " + known, None
        try:
            parsed = parse_command(name, args)
        except ProtocolError as err:
            return False, err.message, None
        try:
            ok, text, data = handler(parsed)
        except Exception as err:  # a handler bug must not take the device down
            return False, name + " failed: " + str(err)[:80], None
        return ok, text, data

    # ------------------------------------------------------------ over-the-air updates (protocol/ota.py)
    def _on_ota_chunk(self, msg):
        ota = self.ota
        got = ota.on_chunk(msg) if ota is not None else None
        if got is None:
            reason = ota.reason if ota is not None and ota.stage == "failed" else None
            return Decision(D_NOTE, code=reason or E_BAD_FRAME,
                            message="update failed: " + reason if reason else "ota_chunk not asked for: ignored")
        return Decision(D_OTA_CHUNK, seq=got[1], name=got[0], data=got[2])

    def ota_frame(self):
        """The update's next frame to send (its state, or the next ota_get), or None: call while online
        after handling each frame (the core keeps one request outstanding)."""
        if not self.online or self.ota is None:
            return None
        return self.ota.next_frame()

    def result_frame(self, command_id, ok, message=None, data=None):
        msg = {"t": T_RESULT, "id": command_id, "ok": ok}
        if message is not None:
            msg["msg"] = message
        if data is not None:
            msg["data"] = data
        return self.dumps(msg)
