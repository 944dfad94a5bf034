"""Drives a daemon through the client openapi-python-client generated from its document:
registers, lists, edits and removes nodes, and reads a 422's named fields. Run by
tests/openapi.rs with the generated package on sys.path; argv: base URL, token file."""

import sys

from lacave_client import AuthenticatedClient
from lacave_client.api.nodes import (
    create_node,
    delete_node,
    get_node,
    list_nodes,
    update_node,
)
from lacave_client.models import (
    CreateNodeRequest,
    CreateNodeRequestLabels,
    NodeResponse,
    NodeUpdateRequest,
    NodeUpdateRequestLabelsType0,
    Problem,
)

url, token_file = sys.argv[1], sys.argv[2]
with open(token_file) as f:
    token = f.read().strip()
client = AuthenticatedClient(base_url=url, token=token, raise_on_unexpected_status=True)

labels = CreateNodeRequestLabels()
labels["zone"] = "a"
made = create_node.sync_detailed(
    client=client,
    body=CreateNodeRequest(
        mac="52:54:00:0a:00:01", hostname="gen01", ip="192.168.1.51", role="worker", labels=labels
    ),
)
assert made.status_code == 201, made
assert isinstance(made.parsed, NodeResponse), made.parsed
assert made.parsed.hostname == "gen01" and made.parsed.state == "registered", made.parsed
assert made.parsed.created_at.year >= 2026, made.parsed.created_at

second = create_node.sync(
    client=client,
    body=CreateNodeRequest(mac="52:54:00:0a:00:02", hostname="gen02", ip="192.168.1.52", role="worker"),
)
assert isinstance(second, NodeResponse), second

# A refusal comes back as the document's Problem, every bad field named.
bad = create_node.sync_detailed(
    client=client,
    body=CreateNodeRequest(mac="nope", hostname="-x-", ip="192.168.1.53", role="worker"),
)
assert bad.status_code == 422, bad
assert isinstance(bad.parsed, Problem), bad.parsed
assert bad.parsed.code == "invalid_field", bad.parsed
assert sorted(e.field for e in bad.parsed.errors) == ["hostname", "mac"], bad.parsed.errors

nodes = list_nodes.sync(client=client)
assert sorted(n.hostname for n in nodes) == ["gen01", "gen02"], nodes

new_labels = NodeUpdateRequestLabelsType0()
new_labels["zone"] = "b"
new_labels["rack"] = "r2"
edited = update_node.sync(name="gen01", client=client, body=NodeUpdateRequest(labels=new_labels, ip="192.168.1.61"))
assert isinstance(edited, NodeResponse), edited
assert edited.labels.to_dict() == {"zone": "b", "rack": "r2"}, edited.labels
assert edited.ip == "192.168.1.61", edited
assert get_node.sync(name="52:54:00:0a:00:01", client=client).ip == "192.168.1.61"

gone = delete_node.sync_detailed(name="gen02", client=client)
assert gone.status_code == 204, gone
missing = get_node.sync_detailed(name="gen02", client=client)
assert missing.status_code == 404 and missing.parsed.code == "not_found", missing
assert [n.hostname for n in list_nodes.sync(client=client)] == ["gen01"]
print("generated client: ok")
