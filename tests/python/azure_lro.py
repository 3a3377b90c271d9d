"""Drives batchgate jobs with the Azure SDK's generic long-running-operation poller.

Usage: python3 azure_lro.py BASE_URL

`azure-core`'s `LROPoller` with `LROBasePolling` finds the `Operation-Location` header of
the submit answer, polls it (honouring `Retry-After`) until its `status` is terminal, and
fetches `resourceLocation`. Run by `crates/server/tests/api/clients.rs`.
"""

import json
import sys

from azure.core import PipelineClient
from azure.core.exceptions import HttpResponseError
from azure.core.polling import LROPoller
from azure.core.polling.base_polling import LROBasePolling
from azure.core.rest import HttpRequest


def start(client, base, tool, body):
    request = HttpRequest("POST", f"{base}/v1/tools/{tool}/jobs", json=body)
    initial = client.send_request(request, _return_pipeline_response=True)
    assert initial.http_response.status_code == 202, initial.http_response.status_code

    def deserialize(pipeline_response):
        return json.loads(pipeline_response.http_response.text())

    return LROPoller(client, initial, deserialize, LROBasePolling(timeout=0.1))


def main():
    base = sys.argv[1]
    client = PipelineClient(base_url=base)
    with open(sys.argv[2], encoding="utf-8") as example:
        body = json.load(example)

    poller = start(client, base, "analyzer", body)
    result = poller.result(timeout=60)
    assert poller.status().lower() == "succeeded", poller.status()
    assert isinstance(result["insights"], list) and result["insights"], result
    print(f"succeeded: {len(result['insights'])} insight rows")

    poller = start(client, base, "failing", {})
    try:
        poller.result(timeout=60)
    except HttpResponseError as error:
        assert poller.status().lower() == "failed", poller.status()
        print(f"failed as expected: {error.message.splitlines()[0]}")
    else:
        raise AssertionError("a failed job must raise")


if __name__ == "__main__":
    main()
