#!/usr/bin/env python3
"""Prints a development bearer token: HS256 signed with AUTH_JWT_SECRET.

Used by `make token USER=alice`. Development only: production tokens come from the
identity provider (Firebase, Auth0) and are verified with RS256 against AUTH_JWKS_URL.
"""
import argparse
import base64
import hashlib
import hmac
import json
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def secret_from(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep and key.strip() == "AUTH_JWT_SECRET":
                    return value.strip().strip('"')
    except OSError as e:
        sys.exit(f"error: cannot read {path}: {e}")
    sys.exit(f"error: AUTH_JWT_SECRET is not set in {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--secret-file", default=".dev.vars")
    p.add_argument("--sub", required=True, help="the auth id (JWT sub)")
    p.add_argument("--email")
    p.add_argument("--ttl", type=int, default=3600, help="seconds until expiry")
    a = p.parse_args()
    secret = secret_from(a.secret_file).encode()
    now = int(time.time())
    claims = {"sub": a.sub, "iat": now, "exp": now + a.ttl}
    if a.email:
        claims["email"] = a.email
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())
    print(f"{header}.{payload}.{sig}")


if __name__ == "__main__":
    main()
