"""An HTTPS producer that is not ours (tests/tls.rs): Python requests posts one
binary-mode CloudEvent with a client certificate, trusting a private CA, and
prints the status code."""

import sys

import requests

url, cacert, cert, key, event_id = sys.argv[1:6]
resp = requests.post(
    url,
    data=b'{"from": "python"}',
    headers={
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/python-requests",
        "ce-type": "tls.test",
        "content-type": "application/json",
    },
    verify=cacert,
    cert=(cert, key),
    timeout=10,
)
print(resp.status_code)
