"""``socket`` of the emulated ESP32: TCP streams carried by the board process on loopback.

Blocking, non-blocking (``setblocking(False)``: EAGAIN) and timeout (``settimeout``:
ETIMEDOUT) modes behave as on lwIP. Only the host's loopback is reachable, as if the
access point's LAN were the host; other addresses fail with EHOSTUNREACH.
"""

import binascii

import _bridge

AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_RAW = 3
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IP = 0
SOL_SOCKET = 4095
SO_REUSEADDR = 4
TCP_NODELAY = 1


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    ip = _bridge.call("resolve", host=host)
    return [(AF_INET, SOCK_STREAM, IPPROTO_TCP, "", (ip, port))]


class socket:
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=IPPROTO_TCP):
        if type != SOCK_STREAM:
            raise OSError(95)  # EOPNOTSUPP: the emulated board carries TCP only
        self._id = _bridge.call("sock_new")
        self._ms = -1  # blocking

    def fileno(self):
        return self._id

    def settimeout(self, seconds):
        self._ms = -1 if seconds is None else int(seconds * 1000)

    def setblocking(self, flag):
        self._ms = -1 if flag else 0

    def setsockopt(self, level, name, value):
        pass

    def connect(self, addr):
        _bridge.call("sock_connect", id=self._id, host=addr[0], port=addr[1], ms=self._ms)

    def send(self, data):
        return _bridge.call("sock_send", id=self._id, data=binascii.hexlify(data).decode(), ms=self._ms)

    write = send

    def sendall(self, data):
        view = memoryview(data)
        while view:
            view = view[self.send(view):]

    def recv(self, n):
        return binascii.unhexlify(_bridge.call("sock_recv", id=self._id, n=n, ms=self._ms))

    def read(self, n=4096):
        return self.recv(n)

    def readinto(self, buf, n=-1):
        n = len(buf) if n < 0 else n
        data = self.recv(n)
        buf[:len(data)] = data
        return len(data)

    def readline(self):
        line = b""
        while not line.endswith(b"\n"):
            c = self.recv(1)
            if not c:
                break
            line += c
        return line

    def close(self):
        if self._id is not None:
            _bridge.call("sock_close", id=self._id)
            self._id = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
