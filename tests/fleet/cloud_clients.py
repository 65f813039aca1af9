"""Drives the fleet emulators with google-cloud-compute and google-cloud-logging (REST
transport, endpoint overridden). Usage: cloud_clients.py URL PROJECT MODE, MODE one of
`read` (lists, guest attributes, entries) or `quota` (reads until a 429 and prints it)."""
import json
import sys

import google.auth.credentials
import google.auth.exceptions
import google.oauth2.credentials
from google.api_core import exceptions
from google.cloud import compute_v1
from google.cloud import logging as cloud_logging

url, project, mode = sys.argv[1], sys.argv[2], sys.argv[3]
token = google.oauth2.credentials.Credentials(token="test-token")
opts = {"api_endpoint": url}
instances = compute_v1.InstancesClient(credentials=token, client_options=opts, transport="rest")
out = {}


def guest(name):
    return compute_v1.GetGuestAttributesInstanceRequest(project=project, zone="zone-a", instance=name, query_path="gce-service-proxy/")


if mode == "read":
    names, warnings = [], {}
    req = compute_v1.AggregatedListInstancesRequest(project=project, filter='labels.gce-service-proxy = "on"', max_results=2)
    for scope, scoped in instances.aggregated_list(request=req, retry=None, timeout=30):
        names += [i.name for i in scoped.instances]
        if scoped.warning.code:
            warnings[scope] = scoped.warning.code
    out["aggregated"] = sorted(names)
    out["zone_warnings"] = warnings
    ga = instances.get_guest_attributes(request=guest("vm-ok"), retry=None, timeout=30)
    out["guest"] = {i.key: i.value for i in ga.query_value.items}
    try:
        instances.get_guest_attributes(request=guest("vm-none"), retry=None, timeout=30)
        out["guest_none"] = 200
    except exceptions.NotFound:
        out["guest_none"] = 404
    migs = compute_v1.RegionInstanceGroupManagersClient(credentials=token, client_options=opts, transport="rest")
    req = compute_v1.ListManagedInstancesRegionInstanceGroupManagersRequest(project=project, region="region-1", instance_group_manager="mig-r", max_results=1)
    out["mig_regional"] = sorted(m.instance.rsplit("/", 1)[-1] for m in migs.list_managed_instances(request=req, retry=None, timeout=30))
    anon = compute_v1.InstancesClient(credentials=google.auth.credentials.AnonymousCredentials(), client_options=opts, transport="rest")
    try:
        list(anon.list(project=project, zone="zone-a", retry=None, timeout=30))
        out["anonymous"] = 200
    except exceptions.Unauthorized:
        out["anonymous"] = 401
    except google.auth.exceptions.InvalidOperation:
        # AnonymousCredentials send no token; on the 401 the session asks them to refresh,
        # which they refuse: that refusal is how the 401 shows here.
        out["anonymous"] = 401
    client = cloud_logging.Client(project=project, credentials=token, client_options=opts, _use_grpc=False)
    # An explicit time bound: without one the library adds `timestamp>=` 24 h before now, and
    # the emulated entries (fixed dates) would age out of the answer as the calendar moves.
    flt = (f'logName="projects/{project}/logs/service-proxy-agent" AND jsonPayload.event="state"'
           ' AND timestamp>="2026-12-06T00:00:00Z"')
    out["log_entries"] = [(e.labels["compute.googleapis.com/resource_name"], e.payload["health"], e.payload["findings"])
                          for e in client.list_entries(resource_names=["projects/" + project], filter_=flt,
                                                       order_by=cloud_logging.DESCENDING, page_size=2)]
elif mode == "quota":
    reads = 0
    try:
        for _ in range(1000):
            instances.get_guest_attributes(request=guest("vm-ok"), retry=None, timeout=30)
            reads += 1
    except exceptions.TooManyRequests as e:
        out["error"] = {"code": e.code, "reason": e.errors[0].get("reason") if e.errors else e.reason}
    out["reads_before_429"] = reads
print(json.dumps(out))
