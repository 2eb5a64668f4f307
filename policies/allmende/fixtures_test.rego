# METADATA
# title: Shared test fixtures
# description: |
#   The example agreements, agreement sets and sample requests that the *_test packages
#   share. This file holds no tests and no policy; the policy engine skips it like every
#   *_test.rego. tests/unit/test_policy_regopy.py reads `inputs`, `agreement_sets` and
#   `settings_sets` and decides every combination in regorus and in regopy, so every
#   input a test uses lives in `inputs` (tests take it as `inp := fx.inputs.<name>` and
#   write `with input as inp`: regopy 1.5.2 crashes on `with input as <rule>`).
package allmende.fixtures_test

import rego.v1

# policies/examples/agreements/ka-ps-permits-2026.yaml, as allmende compiles it. The *_ns
# numbers are the window in nanoseconds since 1970; 9214646400000000000 (2262-01-01) means
# "does not expire".
ka_ps := {
	"agreement": "ka-ps-permits-2026",
	"provider": "kaiserslautern",
	"datasets": ["parking-permits"],
	"consumers": ["pirmasens"],
	"members": ["pirmasens"],
	"purposes": ["traffic-planning"],
	"mask": {"holder": "redact", "plate": "redact"},
	"row_filter": {},
	"valid_from": "2026-01-01T00:00:00+00:00",
	"valid_until": "2028-01-01T00:00:00+00:00",
	"valid_from_ns": 1767225600000000000,
	"valid_until_ns": 1830297600000000000,
	"max_rows": 500,
	"requests_per_minute": 0,
	"min_group_size": 0,
	"replicate": false,
}

# policies/examples/agreements/ka-wnd-permits-2026.yaml, as allmende compiles it.
ka_wnd := {
	"agreement": "ka-wnd-permits-2026",
	"provider": "kaiserslautern",
	"datasets": ["parking-permits"],
	"consumers": ["sankt-wendel"],
	"members": ["sankt-wendel"],
	"purposes": ["research"],
	"mask": {"plate": "redact"},
	"row_filter": {"district": {"in": ["Innenstadt"]}},
	"valid_from": "2026-01-01T00:00:00+00:00",
	"valid_until": "2028-01-01T00:00:00+00:00",
	"valid_from_ns": 1767225600000000000,
	"valid_until_ns": 1830297600000000000,
	"requests_per_minute": 0,
	"min_group_size": 0,
	"replicate": false,
}

# policies/examples/agreements/ka-permit-statistics-2026.yaml (with groups.yaml beside it).
ka_stats := {
	"agreement": "ka-permit-statistics-2026",
	"provider": "kaiserslautern",
	"datasets": ["parking-permits"],
	"consumers": ["group:suedwest-partners"],
	"members": ["pirmasens", "sankt-wendel"],
	"purposes": ["statistics"],
	"mask": {"holder": "redact", "plate": "hash:ka-permit-statistics-2026"},
	"row_filter": {"kind": {"ne": "care"}},
	"valid_from": "2026-01-01T00:00:00+00:00",
	"valid_until": "2028-01-01T00:00:00+00:00",
	"valid_from_ns": 1767225600000000000,
	"valid_until_ns": 1830297600000000000,
	"requests_per_minute": 30,
	"min_group_size": 5,
	"replicate": false,
}

# The example agreements, in the order load_agreements returns them (by file name).
agreements := [ka_stats, ka_ps, ka_wnd]

# A second agreement for pirmasens, to see how several matching agreements combine.
ka_ps_extra := {
	"agreement": "ka-ps-extra",
	"provider": "kaiserslautern",
	"datasets": ["parking-permits"],
	"consumers": ["pirmasens"],
	"members": ["pirmasens"],
	"purposes": ["traffic-planning"],
	"mask": {"plate": "redact", "lot": "redact", "geom": "redact"},
	"row_filter": {"district": {"in": ["Innenstadt"]}},
	"valid_from": "2026-01-01T00:00:00+00:00",
	"valid_from_ns": 1767225600000000000,
	"valid_until_ns": 9214646400000000000,
	"max_rows": 200,
}

# ka_ps_extra under another id with other obligations (a patch of its keys).
variant(id, patch) := object.union(
	object.remove(ka_ps_extra, ["mask", "row_filter", "max_rows"]),
	object.union({"agreement": id, "mask": {}, "row_filter": {}}, patch),
)

# One agreement per mask kind and per row filter operator, as the loader compiles them.
mask_kinds := variant("ka-ps-masks", {"mask": {
	"holder": "redact",
	"plate": "hash:ka-ps-masks",
	"geom": "coarsen:2",
	"free": "bucket:50",
	"rate": "bucket:0.5",
}})

row_filter_ops := [
	variant("ka-ps-eq", {"row_filter": {"f": {"eq": "Innenstadt"}}}),
	variant("ka-ps-ne", {"row_filter": {"f": {"ne": "West"}}}),
	variant("ka-ps-lt", {"row_filter": {"f": {"lt": 10}}}),
	variant("ka-ps-le", {"row_filter": {"f": {"le": 2.5}}}),
	variant("ka-ps-gt", {"row_filter": {"f": {"gt": "2026-01-01"}}}),
	variant("ka-ps-ge", {"row_filter": {"f": {"ge": 0}}}),
	variant("ka-ps-in", {"row_filter": {"f": {"in": ["Innenstadt", 7, true]}}}),
]

agreement_sets := {
	"none": [],
	"examples": agreements,
	"ka_ps_only": [ka_ps],
	"ps_and_extra": [ka_ps, ka_ps_extra],
	"extra_and_ps": [ka_ps_extra, ka_ps],
	"filter_tie": [
		variant("a-first", {"mask": {"x": "redact"}, "row_filter": {"district": {"eq": "Nord"}}}),
		variant("b-second", {"mask": {"y": "redact"}, "row_filter": {"district": {"eq": "Sued"}}}),
	],
	"filter_tie_reversed": [
		variant("b-second", {"mask": {"y": "redact"}, "row_filter": {"district": {"eq": "Sued"}}}),
		variant("a-first", {"mask": {"x": "redact"}, "row_filter": {"district": {"eq": "Nord"}}}),
	],
	"mask_conflict": [
		variant("a", {"mask": {"plate": "hash:a", "geom": "coarsen:2", "free": "bucket:10"}}),
		variant("b", {"mask": {"plate": "redact", "geom": "coarsen:2", "free": "bucket:20"}}),
	],
	"two_hashes": [
		variant("a", {"mask": {"plate": "hash:a"}}),
		variant("b", {"mask": {"plate": "hash:b"}}),
	],
	"mask_kinds": [mask_kinds],
	"row_filter_ops": row_filter_ops,
	"quotas": [
		variant("q-none", {}),
		variant("q-60", {"requests_per_minute": 60}),
		variant("q-30", {"requests_per_minute": 30}),
		variant("q-zero", {"requests_per_minute": 0}),
	],
	"one_quota": [variant("q-60", {"requests_per_minute": 60})],
	"no_quota": [variant("q-none", {}), variant("q-zero", {"requests_per_minute": 0})],
	"aggregate_only": [variant("agg-5", {"min_group_size": 5})],
	"aggregate_and_rows": [
		variant("agg-5", {"min_group_size": 5}),
		variant("agg-10", {"min_group_size": 10}),
		variant("rows", {"min_group_size": 0}),
	],
	"group": [variant("ka-group", {"consumers": ["group:partners"], "members": ["pirmasens", "sankt-wendel"]})],
	"consumers_not_members": [variant("ka-stale", {"consumers": ["pirmasens"], "members": ["sankt-wendel"]})],
	"open_ended": [object.union(object.remove(ka_ps, ["valid_until"]), {"valid_until_ns": 9214646400000000000})],
	"bare": [object.remove(ka_ps, ["mask", "row_filter", "max_rows", "requests_per_minute", "min_group_size"])],
}

settings_sets := {
	"none": null,
	"small_limit": {"default_max_rows": 50},
	"limit_2500": {"default_max_rows": 2500},
	"versioned": {"policy_version": "sha256:0123456789ab"},
}

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
	"now": "2026-11-22T10:00:00+00:00",
}

# The sample request with some parts replaced (object.union merges nested objects).
request_with(patch) := object.union(request, patch)

# Who asks: a member of cluster suedwest other than the owner.
asked_by(member) := {"subject": {"member": member}}

# Every input the tests use, by name.
inputs := {
	"request": request,
	"wnd": request_with({"subject": {"member": "sankt-wendel"}, "request": {"purpose": "research"}}),
	"stats_pirmasens": request_with({"action": "aggregate", "request": {"purpose": "statistics"}}),
	"stats_wnd": request_with({
		"subject": {"member": "sankt-wendel"},
		"action": "aggregate",
		"request": {"purpose": "statistics"},
	}),
	"stats_query": request_with({"request": {"purpose": "statistics"}}),
	"owner": request_with(asked_by("kaiserslautern")),
	"owner_secret": request_with({"subject": {"member": "kaiserslautern"}, "resource": {"classification": "secret"}}),
	"zweibruecken": request_with(asked_by("zweibruecken")),
	"sankt_wendel": request_with(asked_by("sankt-wendel")),
	"other_dataset": request_with({"resource": {"dataset": "parking-occupancy"}}),
	"other_provider": request_with({"resource": {"owner": "homburg"}}),
	"non_member": request_with({"subject": {"member": "luzern", "cluster": "zentralschweiz"}}),
	"non_member_open": request_with({
		"subject": {"member": "luzern", "cluster": "zentralschweiz"},
		"resource": {"classification": "open"},
	}),
	"namesake": request_with({"subject": {"member": "kaiserslautern", "cluster": "nord"}}),
	"open": request_with({"resource": {"classification": "open"}}),
	"open_other_member": request_with({"subject": {"member": "homburg"}, "resource": {"classification": "open"}}),
	"restricted": request_with({"resource": {"classification": "restricted"}}),
	"secret": request_with({"resource": {"classification": "secret"}}),
	"delete": request_with({"action": "delete"}),
	"subscribe": request_with({"action": "subscribe"}),
	"aggregate": request_with({"action": "aggregate"}),
	"wrong_purpose": request_with({"request": {"purpose": "marketing"}}),
	"wrong_purpose_expired": request_with({"request": {"purpose": "marketing"}, "now": "2028-03-01T08:00:00+00:00"}),
	"expired": request_with({"now": "2028-03-01T08:00:00+00:00"}),
	"at_valid_until": request_with({"now": "2028-01-01T00:00:00+00:00"}),
	"at_valid_from": request_with({"now": "2026-01-01T00:00:00+00:00"}),
	"not_yet_valid": request_with({"now": "2025-12-31T23:59:59+00:00"}),
	"offset_now_expired": request_with({"now": "2027-12-31T23:30:00-01:00"}),
	"far_future": request_with({"now": "2099-01-01T00:00:00+00:00"}),
	"before_2026": request_with({"now": "2025-06-01T00:00:00+00:00"}),
	"after_2027": request_with({"now": "2028-06-01T00:00:00+00:00"}),
	"no_now": object.remove(request, ["now"]),
	"empty": {},
}

# Every input, for properties that must hold for all of them.
samples := [inputs[name] | some name in sort(object.keys(inputs))]
