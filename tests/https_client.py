"""An HTTPS producer that is not ours (tests/tls.rs, tests/e2e_senders.rs): Python
requests posts one binary-mode CloudEvent with a client certificate, trusting a
private CA, optionally with a bearer token (OIDC), and prints the status code.

    https_client.py URL CA_FILE CERT_FILE KEY_FILE EVENT_ID [TOKEN]

The event's type is $CE_TYPE (default tls.test)."""

import os
import sys

import requests

url, cacert, cert, key, event_id = sys.argv[1:6]
token = sys.argv[6] if len(sys.argv) > 6 else None
headers = {
    "ce-specversion": "1.0",
    "ce-id": event_id,
    "ce-source": "/python-requests",
    "ce-type": os.environ.get("CE_TYPE", "tls.test"),
    "content-type": "application/json",
}
if token:
    headers["authorization"] = "Bearer " + token
resp = requests.post(
    url,
    data=b'{"from": "python"}',
    headers=headers,
    verify=cacert,
    cert=(cert, key),
    timeout=10,
)
print(resp.status_code)
