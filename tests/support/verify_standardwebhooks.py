"""Verifies captured webhooks with the official Standard Webhooks library.

Usage: verify_standardwebhooks.py CAPTURE.json SECRET [SECRET...]
CAPTURE.json is a list of {"headers": {...}, "body": "<exact body text>"}.
Each request must verify with every given secret (rotation sends one
signature per secret). Prints "verified N" and exits 0, or exits 1.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    capture_path, secrets = sys.argv[1], sys.argv[2:]
    with open(capture_path, encoding="utf-8") as f:
        requests = json.load(f)
    for secret in secrets:
        hook = Webhook(secret)
        for req in requests:
            payload = hook.verify(req["body"], req["headers"])
            if payload["id"] != req["headers"]["webhook-id"]:
                print(f"id mismatch: {payload['id']}", file=sys.stderr)
                return 1
    print(f"verified {len(requests)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
