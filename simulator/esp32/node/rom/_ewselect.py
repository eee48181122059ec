"""``select.poll`` of the emulated ESP32 over the board's sockets (the only pollable objects)."""

import _bridge

POLLIN = 1
POLLOUT = 4
POLLERR = 8
POLLHUP = 16


class _Poll:
    def __init__(self):
        self._objs = {}

    def register(self, obj, mask=POLLIN | POLLOUT):
        self._objs[obj.fileno()] = (obj, mask)

    def unregister(self, obj):
        self._objs.pop(obj.fileno(), None)

    def modify(self, obj, mask):
        self.register(obj, mask)

    def poll(self, timeout=-1):
        ids = [fd for fd in self._objs]
        ready = _bridge.call("poll", ids=ids, ms=-1 if timeout is None else int(timeout))
        out = []
        for fd, ev in ready:
            obj, mask = self._objs[fd]
            ev &= mask | POLLERR | POLLHUP
            if ev:
                out.append((obj, ev))
        return out

    def ipoll(self, timeout=-1, flags=0):
        return iter(self.poll(timeout))


def poll():
    return _Poll()
