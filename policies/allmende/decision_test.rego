package allmende.decision_test

import rego.v1

import data.allmende.decision
import data.allmende.fixtures_test as fx

# A second agreement for pirmasens, to see how several matching agreements combine.
ka_ps_extra := {
	"agreement": "ka-ps-extra",
	"provider": "kaiserslautern",
	"datasets": ["parking-permits"],
	"consumers": ["pirmasens"],
	"purposes": ["traffic-planning"],
	"mask": {"plate": "redact", "lot": "redact", "geom": "redact"},
	"row_filter": {"district": {"in": ["Innenstadt"]}},
	"valid_from": "2026-01-01T00:00:00Z",
	"max_rows": 200,
}

# ka_ps_extra under another id, with another mask and row filter.
variant(id, mask, row_filter) := object.union(
	object.remove(ka_ps_extra, ["agreement", "mask", "row_filter"]),
	{"agreement": id, "mask": mask, "row_filter": row_filter},
)

test_allowed_under_agreement if {
	decision.decision == {
		"allow": true,
		"reasons": ["agreement ka-ps-permits-2026 grants pirmasens access for traffic-planning"],
		"mask": {"holder": "redact", "plate": "redact"},
		"row_filter": {},
		"max_rows": 500,
		"policy_version": "unversioned",
	} with input as fx.request
		with data.allmende.sharing.agreements as fx.agreements
}

test_row_filter_and_default_max_rows if {
	decision.decision == {
		"allow": true,
		"reasons": ["agreement ka-wnd-permits-2026 grants sankt-wendel access for research"],
		"mask": {"plate": "redact"},
		"row_filter": {"district": {"in": ["Innenstadt"]}},
		"max_rows": 10000,
		"policy_version": "unversioned",
	} with input as fx.wnd_request
		with data.allmende.sharing.agreements as fx.agreements
}

test_denied_carries_no_obligations if {
	inp := fx.request_with({"request": {"purpose": "marketing"}})
	decision.decision == {
		"allow": false,
		"reasons": ["purpose marketing is not among the purposes of agreement ka-ps-permits-2026: [traffic-planning]"],
		"mask": {},
		"row_filter": {},
		"max_rows": 0,
		"policy_version": "unversioned",
	} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_non_member_decision if {
	inp := fx.request_with({"subject": {"member": "luzern", "cluster": "zentralschweiz"}})
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreements
	d.allow == false
	d.reasons == ["luzern is not a member of cluster suedwest"]
	d.max_rows == 0
}

test_owner_gets_dataset_unmasked if {
	d := decision.decision with input as fx.request_with(fx.asked_by("kaiserslautern"))
		with data.allmende.sharing.agreements as fx.agreements
	d.allow == true
	d.reasons == ["owner reads its own dataset"]
	d.mask == {}
	d.row_filter == {}
	d.max_rows == 10000
}

test_open_dataset_unmasked_with_default_max_rows if {
	inp := fx.request_with({"subject": {"member": "homburg"}, "resource": {"classification": "open"}})
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreements
		with data.allmende.settings as {"default_max_rows": 2500}
	d.allow == true
	d.reasons == ["open dataset: any member of cluster suedwest may read it"]
	d.mask == {}
	d.max_rows == 2500
}

test_several_agreements_union_of_masks if {
	d := decision.decision with input as fx.request
		with data.allmende.sharing.agreements as [ka_ps_extra, fx.ka_ps]
	d.mask == {"holder": "redact", "plate": "redact", "lot": "redact", "geom": "redact"}
	d.reasons == [
		"agreement ka-ps-extra grants pirmasens access for traffic-planning",
		"agreement ka-ps-permits-2026 grants pirmasens access for traffic-planning",
	]
}

test_several_agreements_max_rows_is_minimum if {
	d := decision.decision with input as fx.request
		with data.allmende.sharing.agreements as [fx.ka_ps, ka_ps_extra]
	d.max_rows == 200
}

test_default_max_rows_caps_agreements if {
	d := decision.decision with input as fx.request
		with data.allmende.sharing.agreements as fx.agreements
		with data.allmende.settings as {"default_max_rows": 50}
	d.max_rows == 50
}

# The row filter comes from the matching agreement with the fewest masks (ka-ps: 2 fields,
# ka-ps-extra: 3), whatever the order of the list.
test_several_agreements_row_filter_from_fewest_masks if {
	every agreements in [[fx.ka_ps, ka_ps_extra], [ka_ps_extra, fx.ka_ps]] {
		d := decision.decision with input as fx.request with data.allmende.sharing.agreements as agreements
		d.row_filter == {}
	}
}

test_row_filter_tie_broken_by_agreement_id if {
	a := variant("a-first", {"x": "redact"}, {"district": {"eq": "Nord"}})
	b := variant("b-second", {"y": "redact"}, {"district": {"eq": "Sued"}})
	every agreements in [[a, b], [b, a]] {
		d := decision.decision with input as fx.request with data.allmende.sharing.agreements as agreements
		d.row_filter == {"district": {"eq": "Nord"}}
		d.mask == {"x": "redact", "y": "redact"}
	}
}

test_same_field_masked_differently_is_redacted if {
	a := variant("a", {"plate": "hash"}, {})
	b := variant("b", {"plate": "redact"}, {})
	d := decision.decision with input as fx.request with data.allmende.sharing.agreements as [a, b]
	d.mask == {"plate": "redact"}
}

test_policy_version_from_settings if {
	d := decision.decision with input as fx.request
		with data.allmende.sharing.agreements as fx.agreements
		with data.allmende.settings as {"policy_version": "sha256:0123456789ab"}
	d.policy_version == "sha256:0123456789ab"
}

test_reasons_sorted_and_never_empty if {
	every inp in fx.samples {
		d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreements
		count(d.reasons) > 0
		d.reasons == sort(d.reasons)
	}
}

test_fallback_reason_when_no_rule_explains if {
	d := decision.decision with input as fx.request
		with data.allmende.sharing.agreements as []
		with data.allmende.baseline.deny as set()
	d.allow == false
	d.reasons == ["no rule allows this request"]
}

test_unknown_classification_decision if {
	d := decision.decision with input as fx.request_with({"resource": {"classification": "secret"}})
		with data.allmende.sharing.agreements as fx.agreements
	d.allow == false
	d.reasons == ["dataset kaiserslautern/parking-permits has unknown classification secret (known: internal, open, restricted)"]
}
