# METADATA
# title: Shared test fixtures
# description: |
#   The example agreements and a sample request that the *_test packages share. This file
#   holds no tests and no policy; the policy engine skips it like every *_test.rego.
package allmende.fixtures_test

import rego.v1

# policies/examples/agreements/ka-ps-permits-2026.yaml, as allmende compiles it.
ka_ps := {
	"agreement": "ka-ps-permits-2026",
	"provider": "kaiserslautern",
	"datasets": ["parking-permits"],
	"consumers": ["pirmasens"],
	"purposes": ["traffic-planning"],
	"mask": {"holder": "redact", "plate": "redact"},
	"row_filter": {},
	"valid_from": "2026-01-01T00:00:00Z",
	"valid_until": "2027-01-01T00:00:00Z",
	"max_rows": 500,
}

# policies/examples/agreements/ka-wnd-permits-2026.yaml, as allmende compiles it.
ka_wnd := {
	"agreement": "ka-wnd-permits-2026",
	"provider": "kaiserslautern",
	"datasets": ["parking-permits"],
	"consumers": ["sankt-wendel"],
	"purposes": ["research"],
	"mask": {"plate": "redact"},
	"row_filter": {"district": {"in": ["Innenstadt"]}},
	"valid_from": "2026-01-01T00:00:00Z",
	"valid_until": "2027-01-01T00:00:00Z",
}

agreements := [ka_ps, ka_wnd]

# pirmasens' traffic dashboard asks kaiserslautern for its internal parking permits.
request := {
	"subject": {"member": "pirmasens", "cluster": "suedwest", "service": "traffic-dashboard"},
	"action": "query",
	"resource": {
		"owner": "kaiserslautern",
		"cluster": "suedwest",
		"dataset": "parking-permits",
		"classification": "internal",
		"fields": ["lot", "free", "plate", "holder", "district", "geom"],
	},
	"request": {"purpose": "traffic-planning", "fields": ["lot", "free"], "limit": 500},
	"now": "2026-11-22T10:00:00Z",
}

# The sample request with some parts replaced (object.union merges nested objects).
request_with(patch) := object.union(request, patch)

# Who asks: a member of cluster suedwest other than the owner.
asked_by(member) := {"subject": {"member": member}}

# sankt-wendel asks for research, as its agreement allows.
wnd_request := request_with({"subject": {"member": "sankt-wendel"}, "request": {"purpose": "research"}})

# Inputs of every kind, for properties that must hold for all of them.
samples := [
	request,
	wnd_request,
	request_with(asked_by("kaiserslautern")),
	request_with({"subject": {"member": "luzern", "cluster": "zentralschweiz"}}),
	request_with({"resource": {"classification": "open"}}),
	request_with({"resource": {"classification": "restricted"}}),
	request_with({"resource": {"classification": "secret"}}),
	request_with({"action": "delete"}),
	request_with({"action": "subscribe"}),
	request_with({"request": {"purpose": "marketing"}}),
	request_with({"now": "2025-06-01T00:00:00Z"}),
	request_with({"now": "2027-06-01T00:00:00Z"}),
	{},
]
