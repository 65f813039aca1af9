"""Drives the fleet emulators (testkit/src/fleet_apis.rs) with google-api-python-client, built
from the discovery documents it ships (static_discovery=True), endpoint overridden.
Usage: discovery_client.py URL PROJECT. Prints one JSON object of what the API answered."""
import json
import sys

import httplib2
import google.oauth2.credentials
from googleapiclient import discovery, errors

url, project = sys.argv[1], sys.argv[2]
token = google.oauth2.credentials.Credentials(token="test-token")


def build(api, version, base, creds=token):
    kw = {"credentials": creds} if creds else {"http": httplib2.Http()}
    return discovery.build(api, version, static_discovery=True, client_options={"api_endpoint": base},
                           cache_discovery=False, **kw)


def status(call):
    try:
        call.execute(num_retries=0)
        return 200
    except errors.HttpError as e:
        return {"status": e.resp.status, "reason": e.error_details[0].get("reason") if e.error_details else None}


compute = build("compute", "v1", url + "/compute/v1/")
out = {}
# Aggregated list, filtered on the label, two per page, every page.
names, pages, warnings = [], 0, {}
req = compute.instances().aggregatedList(project=project, filter='labels.gce-service-proxy = "on"', maxResults=2)
while req is not None:
    resp = req.execute(num_retries=0)
    pages += 1
    for scope, scoped in resp.get("items", {}).items():
        names += [i["name"] for i in scoped.get("instances", [])]
        if "warning" in scoped:
            warnings[scope] = scoped["warning"]["code"]
    out["unreachables"] = resp.get("unreachables", [])
    req = compute.instances().aggregatedList_next(req, resp)
out["aggregated"] = sorted(names)
out["aggregated_pages"] = pages
out["zone_warnings"] = warnings
# One zone.
resp = compute.instances().list(project=project, zone="zone-a", filter='labels.gce-service-proxy = "on"').execute()
out["zone_a"] = sorted(i["name"] for i in resp.get("items", []))
# Guest attributes.
ga = compute.instances().getGuestAttributes(project=project, zone="zone-a", instance="vm-ok", queryPath="gce-service-proxy/").execute()
out["guest"] = {i["key"]: i["value"] for i in ga["queryValue"]["items"]}
out["guest_kind"] = ga["kind"]
out["guest_none"] = status(compute.instances().getGuestAttributes(project=project, zone="zone-a", instance="vm-none", queryPath="gce-service-proxy/"))
out["guest_forbidden"] = status(compute.instances().getGuestAttributes(project=project, zone="zone-b", instance="vm-forbidden", queryPath="gce-service-proxy/"))
# Managed instances, zonal and regional, one per page.
def managed(resource, **kw):
    names, req = [], resource.listManagedInstances(project=project, maxResults=1, **kw)
    while req is not None:
        resp = req.execute(num_retries=0)
        names += [m["instance"].rsplit("/", 1)[-1] for m in resp.get("managedInstances", [])]
        req = resource.listManagedInstances_next(req, resp)
    return sorted(names)
out["mig_zonal"] = managed(compute.instanceGroupManagers(), zone="zone-a", instanceGroupManager="mig-a")
out["mig_regional"] = managed(compute.regionInstanceGroupManagers(), region="region-1", instanceGroupManager="mig-r")
# Without credentials (plain httplib2, no Authorization header): 401.
anon = build("compute", "v1", url + "/compute/v1/", None)
out["anonymous"] = status(anon.instances().list(project=project, zone="zone-a"))
# Cloud Logging entries:list, newest first, paged by 2.
logging = build("logging", "v2", url + "/")
body = {"resourceNames": ["projects/" + project],
        "filter": f'logName="projects/{project}/logs/service-proxy-agent" AND jsonPayload.event="state" AND timestamp>="2026-12-06T09:00:00Z"',
        "orderBy": "timestamp desc", "pageSize": 2}
got, pages = [], 0
req = logging.entries().list(body=body)
while req is not None:
    resp = req.execute(num_retries=0)
    pages += 1
    got += [(e["labels"]["compute.googleapis.com/resource_name"], e["jsonPayload"]["health"], e["timestamp"]) for e in resp.get("entries", [])]
    req = logging.entries().list_next(req, resp)
out["log_entries"] = got
out["log_pages"] = pages
print(json.dumps(out))
