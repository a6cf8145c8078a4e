#!/usr/bin/env python3
"""Prints a bearer token: a user's (HS256 signed with AUTH_JWT_SECRET) or a service's
(HS256 signed with SERVICE_JWT_SECRET, `scope: plangate:service`).

Used by `make token USER=alice` (development only: production user tokens come from the
identity provider and are verified with RS256 against AUTH_JWKS_URL) and
`make token SERVICE=resume-api` (a service token for another backend; mint production
ones with the production SERVICE_JWT_SECRET in a secrets file).
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


def secret_from(path: str, name: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep and key.strip() == name:
                    return value.strip().strip('"')
    except OSError as e:
        sys.exit(f"error: cannot read {path}: {e}")
    sys.exit(f"error: {name} is not set in {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--secret-file", default=".dev.vars")
    p.add_argument("--sub", help="the auth id (JWT sub) of a user")
    p.add_argument("--service", help="a service name: mint a service token instead")
    p.add_argument("--email")
    p.add_argument("--ttl", type=int, default=3600, help="seconds until expiry")
    a = p.parse_args()
    if bool(a.sub) == bool(a.service):
        sys.exit("error: give exactly one of --sub (a user) and --service (a service)")
    name = "SERVICE_JWT_SECRET" if a.service else "AUTH_JWT_SECRET"
    secret = secret_from(a.secret_file, name).encode()
    now = int(time.time())
    claims = {"sub": a.service or a.sub, "iat": now, "exp": now + a.ttl}
    if a.service:
        claims["scope"] = "plangate:service"
    elif a.email:
        claims["email"] = a.email
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())
    print(f"{header}.{payload}.{sig}")


if __name__ == "__main__":
    main()
