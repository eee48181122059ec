"""MicroPython-side stand-in for ``socket``: a loopback to an in-memory gateway.

The "gateway" behind it is protocol.gateway.GatewaySession plus a minimal
WebSocket server framing, so firmware/wsclient.py and firmware/app.py run
unmodified. ``OUTAGE[0] = True`` makes connects fail (gateway down). Like the real gateway it
selects the subprotocol edgewire.v1.cbor when the device offers it; ``FRAMES`` counts the data
frames received by type.
"""

import gc
import io

core = None  # protocol.gateway, imported at the first connection so heap figures count it as firmware

AF_INET = 2
SOCK_STREAM = 1
OUTAGE = [False]
STORED = []  # seqs stored, in order
STATUS = []
RESULTS = []
GATEWAY_ALLOC = [0]  # bytes the in-memory gateway allocated (not the device's; measurement subtracts it)
FRAMES = {"text": 0, "binary": 0}  # data frames stored, by WebSocket frame type
_CBOR = b"edgewire.v1.cbor"
_POLLIN = 1


def getaddrinfo(host, port, family=0, kind=0):
    return [(AF_INET, SOCK_STREAM, 0, "", (host, port))]


class socket(io.IOBase):
    def __init__(self, family=AF_INET, kind=SOCK_STREAM):
        global core
        if core is None:
            from protocol import gateway
            core = gateway
        self.inbuf = b""
        self.out = b""
        self.upgraded = False
        self.session = core.GatewaySession(rate=1000, burst=1000)
        self.closed = False

    def settimeout(self, seconds):
        pass

    def setblocking(self, flag):
        pass

    def connect(self, addr):
        if OUTAGE[0]:
            raise OSError(111)

    def ioctl(self, request, arg):
        if request == 3:  # MP_STREAM_POLL
            return _POLLIN if (self.out or self.closed) and arg & _POLLIN else 0
        return 0

    def read(self, n):
        data = self.out[:n]  # the bytes a real socket's read returns: the device's
        before = gc.mem_alloc()
        self.out = self.out[n:]
        GATEWAY_ALLOC[0] += gc.mem_alloc() - before
        return data

    def readinto(self, buf):
        before = gc.mem_alloc()  # a real readinto fills the caller's buffer and allocates nothing
        n = min(len(buf), len(self.out))
        buf[:n] = self.out[:n]
        self.out = self.out[n:]
        GATEWAY_ALLOC[0] += gc.mem_alloc() - before
        return n

    def write(self, data):
        before = gc.mem_alloc()
        self.inbuf += bytes(data)
        self._process()
        GATEWAY_ALLOC[0] += gc.mem_alloc() - before
        return len(data)

    def close(self):
        self.closed = True

    def _send(self, opcode, payload):
        n = len(payload)
        head = bytes([0x80 | opcode, n]) if n < 126 else bytes([0x80 | opcode, 126, n >> 8, n & 255])
        self.out += head + payload

    def _process(self):
        if not self.upgraded:
            end = self.inbuf.find(b"\r\n\r\n")
            if end < 0:
                return
            cbor = _CBOR in self.inbuf[:end]  # offered in Sec-WebSocket-Protocol: selected
            self.inbuf = self.inbuf[end + 4:]
            self.upgraded = True
            self.session.cbor = cbor
            self.out += (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         + (b"Sec-WebSocket-Protocol: " + _CBOR + b"\r\n" if cbor else b"") + b"\r\n")
        while len(self.inbuf) >= 6:
            b1 = self.inbuf[1] & 0x7F
            pos = 2
            if b1 == 126:
                b1 = (self.inbuf[2] << 8) | self.inbuf[3]
                pos = 4
            if len(self.inbuf) < pos + 4 + b1:
                return
            key = self.inbuf[pos:pos + 4]
            payload = bytearray(self.inbuf[pos + 4:pos + 4 + b1])
            opcode = self.inbuf[0] & 0x0F
            self.inbuf = self.inbuf[pos + 4 + b1:]
            for i in range(len(payload)):
                payload[i] ^= key[i & 3]
            if opcode == 1:
                self._frame(bytes(payload).decode())
            elif opcode == 2:
                self._frame(bytes(payload))
            elif opcode == 8:
                self.closed = True

    def _frame(self, text):
        ev = self.session.receive(text, 0.0)
        if ev.kind == core.EV_AUTH:
            last = STORED[-1] if STORED else 0
            self._send(1, self.session.accept(ev.payload["device_id"], last, 0).encode())
        elif ev.kind == core.EV_DATA:
            FRAMES["text" if type(text) is str else "binary"] += 1
            for reading in ev.payload.readings:
                STORED.append(reading.seq)
            self._send(1, self.session.ack(ev.payload.last_seq).encode())
        elif ev.kind == core.EV_STATUS:
            STATUS.append(ev.payload)
        elif ev.kind == core.EV_RESULT:
            RESULTS.append(ev.payload)
        elif ev.reply:
            self._send(1, ev.reply.encode())
