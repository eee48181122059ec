"""The phone page's driver around protocol/device.py, run by MicroPython's WebAssembly port in the browser.

The core (DeviceSession: what to send, what each gateway frame means, commands, reconnect
decisions) is protocol/device.py itself, served by the gateway from protocol/. This driver only
does what the firmware's app.py does around it, with the browser as the board: the outbox
(readings kept until acknowledged) lives in memory and, write-through, in IndexedDB (phone.js
plays flash ring's part, firmware/ring.py); the WebSocket, the sensors, the screen and the
vibration motor are phone.js's, reached through the JS module ``phonehost``. MicroPython subset,
like firmware/ (not type-checked).
"""

import json
import sys

import phonehost as host

from protocol.device import D_COMMAND, D_DROP, D_INVALID, D_NOTE, D_WELCOME, DeviceSession
from protocol.outbox import MemoryOutbox
from protocol.wire import Reading

FW = "phone page, MicroPython " + ".".join([str(n) for n in sys.implementation.version[:3]])
MAX_READINGS = 20000  # the IndexedDB store's bound: beyond it the oldest reading goes (a counted gap)


class IdbOutbox(MemoryOutbox):
    """MemoryOutbox whose every change is also written to IndexedDB (in order, by phone.js):
    readings survive a closed tab, the counter and its "confirmed" mark survive a reload."""

    def __init__(self, next_seq, confirmed, records, limit=MAX_READINGS):
        MemoryOutbox.__init__(self, next_seq, limit)
        self.confirmed = confirmed
        for seq, text in records:
            item = json.loads(text)
            self.readings.append(Reading(seq, item["m"], item.get("ts")))

    def _meta(self):
        host.meta(self.next_seq, self.confirmed, self.dropped)

    def add(self, metrics, ts=None, up=None, quality=None):
        before = self.dropped
        reading = MemoryOutbox.add(self, metrics, ts, up, quality)
        if self.dropped != before:  # the oldest made room: gone from the store too
            host.remove(0, self.readings[0].seq - 1)
        host.put(reading.seq, json.dumps(reading.to_wire()))
        self._meta()
        return reading

    def ack(self, seq):
        count = MemoryOutbox.ack(self, seq)
        if count:
            host.remove(0, seq)
        return count

    def drop(self, first, last):
        count = MemoryOutbox.drop(self, first, last)
        if count:
            host.remove(first, last)
        return count

    def renumber(self, delta):
        MemoryOutbox.renumber(self, delta)
        host.renumber(delta)
        self._meta()

    def confirm(self):
        if not self.confirmed:
            MemoryOutbox.confirm(self)
            self._meta()


class Phone:
    """One device: the session, its outbox and the command handlers. phone.js calls the methods
    below with the page's clock (``now`` in ms) and sends what ``host.send`` is given."""

    def __init__(self, device_id, token, boot, next_seq, confirmed, records_json, interval):
        self.outbox = IdbOutbox(next_seq, confirmed, json.loads(records_json))
        self.interval = interval
        self.outputs = {"screen": False, "vibrate": False}
        handlers = {"set_interval": self._set_interval, "ping": self._ping, "set_output": self._set_output}
        self.session = DeviceSession(device_id, token=token, boot=boot, outbox=self.outbox, handlers=handlers)

    # ------------------------------------------------------------ commands
    def _set_interval(self, args):
        host.set_interval(args["seconds"])
        self.interval = args["seconds"]
        return True, "interval " + str(args["seconds"]) + " s", None

    def _ping(self, args):
        return True, "pong", {"buffered": self.outbox.count}

    def _set_output(self, args):
        name = args["output"]
        if name != "screen" and name != "vibrate":
            return False, "no output '" + name[:32] + "'; this phone has: screen, vibrate", None
        done = host.output(name, args["on"])
        if not done:
            return False, name + " is not available in this browser", None
        self.outputs[name] = args["on"]
        return True, name + (" on" if args["on"] else " off"), None

    # ------------------------------------------------------------ from phone.js
    def opened(self, now):
        """The WebSocket is open: authenticate in the first frame (browsers cannot set headers)."""
        host.send(self.session.auth_frame())

    def message(self, text, now):
        decision = self.session.handle(text, now)
        kind = decision.kind
        if kind == D_WELCOME:
            self.status()
        elif kind == D_COMMAND:
            host.send(decision.reply)
            host.log("command " + str(decision.name) + ": " + decision.message)
            if decision.ok and decision.name in ("set_interval", "set_output"):
                self.status()
        elif kind == D_DROP or kind == D_NOTE or kind == D_INVALID:
            host.log(kind + " " + str(decision.code) + ": " + decision.message)
        self.pump(now)
        return kind

    def reading(self, item_json, now):
        """One reading, ``{"m": {metric: value}, "ts": Unix ms}`` as JSON (so ts arrives an int)."""
        item = json.loads(item_json)
        self.outbox.add(item["m"], item["ts"])
        self.pump(now)

    def pump(self, now):
        """Send every data frame the window and pacing allow; ask to be woken when pacing holds one."""
        session = self.session
        while True:
            frame = session.next_frame(now_ms=now)
            if frame is None:
                break
            host.send(frame)
        wait = session.send_wait_ms(now)
        if wait > 0 and session.can_send() and self.outbox.count:
            host.wake(wait)

    def ended(self, code, now, reached):
        """The connection ended (``reached``: it had opened; ``code``: its close code, 0 for none):
        when to try again, from the core's rules (docs/protocol.md section 11)."""
        if reached:
            decision = self.session.closed(code or None, now)
        else:
            decision = self.session.failed(now)
        host.retry(decision.action, decision.delay_ms, decision.reason)

    def status(self):
        """The health report of docs/protocol.md section 7: the dashboard's Status panel, the MQTT
        bridge's diagnostics and output switches."""
        host.send(self.session.status_frame({
            "kind": "phone", "fw": FW, "buffered": self.outbox.count, "dropped": self.outbox.dropped,
            "rejected": self.session.rejected, "interval": self.interval, "outputs": self.outputs}))

    def state(self):
        return json.dumps({"online": self.session.online, "buffered": self.outbox.count,
                           "acked": self.session.acked, "next_seq": self.outbox.next_seq,
                           "dropped": self.outbox.dropped, "rejected": self.session.rejected})
