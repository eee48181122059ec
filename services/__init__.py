"""Throwaway servers on loopback for tests, demos and benchmarks (PostgreSQL, Redis, NATS).

Each launcher runs the real Debian binary in a temporary directory on a free port and
cleans up after itself. Errors are ``services.errors.ServiceError``.
"""
