"""The peer of the fleet benchmark (benches/suite/fleet.rs): what a user scripts around
`gcloud compute instances get-guest-attributes` to learn a fleet's state, written with Google's
real Python client (google-api-python-client, the client built from the Compute discovery
document it ships, endpoint overridden, a bearer token as gcloud would hold one). gcloud itself
is not installable here (neither on PyPI nor in Debian).

Usage:
  fleet_peer.py list URL PROJECT             the VMs labelled gce-service-proxy=on, paged:
                                             `ZONE NAME` lines (one process, like
                                             `gcloud compute instances list --filter=...`)
  fleet_peer.py one URL PROJECT ZONE NAME    one process per VM: start, build the client, one
                                             getGuestAttributes call; prints `NAME STATE`
  fleet_peer.py loop URL PROJECT LIMIT       one process, one client: the list, then the first
                                             LIMIT VMs read one after another; `NAME STATE` lines,
                                             then `# list_s X reads_s Y`

STATE is the `health` guest attribute, or `HTTP <status>` when the call failed.
The token is read from SPA_BENCH_TOKEN."""
import os
import sys
import time

import google.oauth2.credentials
from googleapiclient import discovery, errors

FILTER = 'labels.gce-service-proxy = "on"'
NAMESPACE = "gce-service-proxy/"


def client(url):
    token = google.oauth2.credentials.Credentials(token=os.environ["SPA_BENCH_TOKEN"])
    return discovery.build("compute", "v1", static_discovery=True, cache_discovery=False,
                           client_options={"api_endpoint": url + "/compute/v1/"}, credentials=token)


def vms(compute, project):
    out = []
    req = compute.instances().aggregatedList(project=project, filter=FILTER, maxResults=500)
    while req is not None:
        resp = req.execute(num_retries=0)
        for scoped in resp.get("items", {}).values():
            out += [(i["zone"].rsplit("/", 1)[-1], i["name"]) for i in scoped.get("instances", [])]
        req = compute.instances().aggregatedList_next(req, resp)
    return out


def state(compute, project, zone, name):
    try:
        ga = compute.instances().getGuestAttributes(project=project, zone=zone, instance=name,
                                                    queryPath=NAMESPACE).execute(num_retries=0)
    except errors.HttpError as e:
        return "HTTP %d" % e.resp.status
    items = ga.get("queryValue", {}).get("items", [])
    return next((i["value"] for i in items if i["key"] == "health"), "HTTP 200 without health")


def main():
    mode, url, project = sys.argv[1], sys.argv[2], sys.argv[3]
    compute = client(url)
    if mode == "list":
        for zone, name in vms(compute, project):
            print(zone, name)
    elif mode == "one":
        zone, name = sys.argv[4], sys.argv[5]
        print(name, state(compute, project, zone, name))
    elif mode == "loop":
        limit = int(sys.argv[4])
        t = time.monotonic()
        listed = vms(compute, project)
        list_s = time.monotonic() - t
        t = time.monotonic()
        for zone, name in listed[:limit]:
            print(name, state(compute, project, zone, name))
        print("# list_s %.6f reads_s %.6f" % (list_s, time.monotonic() - t))
    else:
        sys.exit("unknown mode " + mode)


main()
