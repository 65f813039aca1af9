"""Drives testkit's project_apis emulator with Google's real google-api-python-client, from the
discovery documents it ships (static_discovery=True), with the bearer token the metadata emulator
issued. Prints one JSON object: each call's answer, or its HTTP error (status, reason, message).

usage: project_apis.py ENDPOINT TOKEN PROJECT_ID PROJECT_NUMBER NODE_ID NETWORK
"""
import json
import sys

import google.oauth2.credentials
from googleapiclient import discovery
from googleapiclient.errors import HttpError

endpoint, token, project_id, number, node_id, network = sys.argv[1:7]
creds = google.oauth2.credentials.Credentials(token=token)


def build(name, version, path=""):
    return discovery.build(
        name,
        version,
        static_discovery=True,
        credentials=creds,
        client_options={"api_endpoint": endpoint.rstrip("/") + "/" + path},
    )


def run(call):
    try:
        return {"ok": call.execute(num_retries=0)}
    except HttpError as e:
        return {"status": e.resp.status, "reason": e._get_reason(), "details": e.error_details}


out = {}
crm = build("cloudresourcemanager", "v1")
out["iam"] = run(
    crm.projects().testIamPermissions(
        resource=project_id,
        body={"permissions": [
            "trafficdirector.networks.getConfigs",
            "trafficdirector.networks.reportMetrics",
            "logging.logEntries.create",
        ]},
    )
)
su = build("serviceusage", "v1")
out["service"] = run(su.services().get(name=f"projects/{number}/services/trafficdirector.googleapis.com"))
td = build("trafficdirector", "v3")
req = td.discovery().client_status(body={"nodeMatchers": [{
    "nodeId": {"exact": node_id},
    "nodeMetadatas": [
        {"path": [{"key": "TRAFFICDIRECTOR_NETWORK_NAME"}], "value": {"stringMatch": {"exact": network}}},
        {"path": [{"key": "TRAFFICDIRECTOR_GCP_PROJECT_NUMBER"}], "value": {"stringMatch": {"exact": number}}},
    ],
}]})
req.headers["x-goog-user-project"] = number
out["csds"] = run(req)
compute = build("compute", "v1", "compute/v1/")
out["rules"] = run(
    compute.forwardingRules().aggregatedList(
        project=project_id, filter='loadBalancingScheme="INTERNAL_SELF_MANAGED"'
    )
)
print(json.dumps(out))
