"""Verifies captured webhooks, one event or a batch each, with the official
Standard Webhooks library.

Usage: verify_batches.py CAPTURE.json SECRET
CAPTURE.json is a list of {"headers": {...}, "body": "<body text after
undoing content-encoding>"}. A batch (a JSON array) must carry a
webhook-id that is none of its events' ids; a CloudEvent in binary mode
one equal to its ce-id. Prints "verified N requests,
M events" and exits 0, or exits 1.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    capture_path, secret = sys.argv[1], sys.argv[2]
    with open(capture_path, encoding="utf-8") as f:
        requests = json.load(f)
    hook = Webhook(secret)
    events = 0
    for req in requests:
        payload = hook.verify(req["body"], req["headers"])
        msg_id = req["headers"]["webhook-id"]
        if "ce-id" in req["headers"]:
            # CloudEvents binary mode: the body is the event's data.
            if req["headers"]["ce-id"] != msg_id:
                print(f"ce-id {req['headers']['ce-id']} is not webhook-id {msg_id}", file=sys.stderr)
                return 1
            events += 1
        elif isinstance(payload, list):
            if any(e["id"] == msg_id for e in payload):
                print(f"batch id {msg_id} is one of its event ids", file=sys.stderr)
                return 1
            events += len(payload)
        else:
            if payload["id"] != msg_id:
                print(f"id mismatch: {payload['id']}", file=sys.stderr)
                return 1
            events += 1
    print(f"verified {len(requests)} requests, {events} events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
