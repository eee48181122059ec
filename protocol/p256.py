"""ECDSA verification over NIST P-256 (secp256r1), pure Python: the arithmetic behind
protocol.ota.verify (call that: it checks the formats and hashes the message).

Jacobian coordinates (doubling with a = -3, mixed additions with an affine point), Shamir's trick
for u1*G + u2*Q in one pass over the bits, inverses by Fermat (3-argument pow). Verification
only: no secret is ever handled on a device, so constant time does not matter here.
MicroPython subset like wire.py (int.from_bytes, 3-argument pow); the types live in p256.pyi.
"""

_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # the group order
_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5


def _double(x1, y1, z1):
    """2P in Jacobian coordinates (a = -3); z = 0 is the point at infinity."""
    p = _P
    if not z1 or not y1:
        return 0, 1, 0
    delta = z1 * z1 % p
    gamma = y1 * y1 % p
    beta = x1 * gamma % p
    alpha = 3 * (x1 - delta) * (x1 + delta) % p
    x3 = (alpha * alpha - 8 * beta) % p
    z3 = ((y1 + z1) * (y1 + z1) - gamma - delta) % p
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % p
    return x3, y3, z3


def _add_affine(x1, y1, z1, x2, y2):
    """P + Q, P Jacobian, Q affine (mixed addition)."""
    p = _P
    if not z1:
        return x2, y2, 1
    zz = z1 * z1 % p
    u2 = x2 * zz % p
    s2 = y2 * zz * z1 % p
    h = (u2 - x1) % p
    r = (s2 - y1) % p
    if not h:
        if not r:
            return _double(x1, y1, z1)
        return 0, 1, 0
    hh = h * h % p
    hhh = hh * h % p
    v = x1 * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    y3 = (r * (v - x3) - y1 * hhh) % p
    z3 = z1 * h % p
    return x3, y3, z3


def _affine(x, y, z):
    p = _P
    inv = pow(z, p - 2, p)
    inv2 = inv * inv % p
    return x * inv2 % p, y * inv2 * inv % p


def on_curve(x, y):
    """True when (x, y) is a point of P-256 (coordinates in the field)."""
    p = _P
    return 0 <= x < p and 0 <= y < p and (y * y - (x * x * x - 3 * x + _B)) % p == 0


def verify_digest(point, digest, r, s):
    """True when (r, s) is a valid ECDSA signature of the 32-byte ``digest`` by the public key
    ``point`` = (x, y), already checked with on_curve()."""
    n = N
    if not 0 < r < n or not 0 < s < n:
        return False
    e = int.from_bytes(digest, "big")
    w = pow(s, n - 2, n)
    u1 = e * w % n
    u2 = r * w % n
    qx, qy = point
    sx, sy, sz = _add_affine(_GX, _GY, 1, qx, qy)  # G + Q, for the bits where u1 and u2 are both set
    both = _affine(sx, sy, sz) if sz else None
    x, y, z = 0, 1, 0
    bit = 256
    while bit > 0:
        bit -= 1
        x, y, z = _double(x, y, z)
        a = (u1 >> bit) & 1
        b = (u2 >> bit) & 1
        if a and b:
            if both is not None:
                x, y, z = _add_affine(x, y, z, both[0], both[1])
        elif a:
            x, y, z = _add_affine(x, y, z, _GX, _GY)
        elif b:
            x, y, z = _add_affine(x, y, z, qx, qy)
    if not z:
        return False
    ax, _ay = _affine(x, y, z)
    return ax % n == r
