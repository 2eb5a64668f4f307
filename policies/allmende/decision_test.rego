package allmende.decision_test

import rego.v1

import data.allmende.decision
import data.allmende.fixtures_test as fx

test_allowed_under_agreement if {
	inp := fx.inputs.request
	decision.decision == {
		"allow": true,
		"reasons": ["agreement ka-ps-permits-2026 grants pirmasens access for traffic-planning"],
		"mask": {"holder": "redact", "plate": "redact"},
		"row_filter": {},
		"max_rows": 500,
		"policy_version": "unversioned",
		"way_in": "agreement",
		"agreements": ["ka-ps-permits-2026"],
		"min_group_size": 0,
		"requests_per_minute": 0,
	} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_row_filter_and_default_max_rows if {
	inp := fx.inputs.wnd
	decision.decision == {
		"allow": true,
		"reasons": ["agreement ka-wnd-permits-2026 grants sankt-wendel access for research"],
		"mask": {"plate": "redact"},
		"row_filter": {"district": {"in": ["Innenstadt"]}},
		"max_rows": 10000,
		"policy_version": "unversioned",
		"way_in": "agreement",
		"agreements": ["ka-wnd-permits-2026"],
		"min_group_size": 0,
		"requests_per_minute": 0,
	} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_denied_carries_no_obligations if {
	inp := fx.inputs.wrong_purpose
	decision.decision == {
		"allow": false,
		"reasons": [
			"purpose marketing is not among the purposes of agreement ka-permit-statistics-2026: [statistics]",
			"purpose marketing is not among the purposes of agreement ka-ps-permits-2026: [traffic-planning]",
		],
		"mask": {},
		"row_filter": {},
		"max_rows": 0,
		"policy_version": "unversioned",
		"way_in": "",
		"agreements": [],
		"min_group_size": 0,
		"requests_per_minute": 0,
	} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_expired_agreement_denies if {
	inp := fx.inputs.expired
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.ka_ps_only
	d.allow == false
	d.reasons == ["agreement ka-ps-permits-2026 expired at 2028-01-01T00:00:00+00:00"]
	d.mask == {}
	d.max_rows == 0
	d.agreements == []
}

test_non_member_decision if {
	inp := fx.inputs.non_member
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreements
	d.allow == false
	d.reasons == ["luzern is not a member of cluster suedwest"]
	d.max_rows == 0
	d.way_in == ""
}

test_owner_gets_dataset_unmasked if {
	inp := fx.inputs.owner
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreements
	d.allow == true
	d.reasons == ["owner reads its own dataset"]
	d.mask == {}
	d.row_filter == {}
	d.max_rows == 10000
	d.way_in == "owner"
	d.agreements == []
	d.min_group_size == 0
	d.requests_per_minute == 0
}

test_open_dataset_unmasked_with_default_max_rows if {
	inp := fx.inputs.open_other_member
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreements
		with data.allmende.settings as fx.settings_sets.limit_2500
	d.allow == true
	d.reasons == ["open dataset: any member of cluster suedwest may read it"]
	d.mask == {}
	d.max_rows == 2500
	d.way_in == "open"
	d.agreements == []
}

test_several_agreements_union_of_masks if {
	inp := fx.inputs.request
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.extra_and_ps
	d.mask == {"holder": "redact", "plate": "redact", "lot": "redact", "geom": "redact"}
	d.reasons == [
		"agreement ka-ps-extra grants pirmasens access for traffic-planning",
		"agreement ka-ps-permits-2026 grants pirmasens access for traffic-planning",
	]
	d.agreements == ["ka-ps-extra", "ka-ps-permits-2026"]
}

test_several_agreements_max_rows_is_minimum if {
	inp := fx.inputs.request
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.ps_and_extra
	d.max_rows == 200
}

test_default_max_rows_caps_agreements if {
	inp := fx.inputs.request
	d := decision.decision with input as inp
		with data.allmende.sharing.agreements as fx.agreements
		with data.allmende.settings as fx.settings_sets.small_limit
	d.max_rows == 50
}

# The row filter comes from the matching agreement with the fewest masks (ka-ps: 2 fields,
# ka-ps-extra: 3), whatever the order of the list.
test_several_agreements_row_filter_from_fewest_masks if {
	inp := fx.inputs.request
	every agreements in [fx.agreement_sets.ps_and_extra, fx.agreement_sets.extra_and_ps] {
		d := decision.decision with input as inp with data.allmende.sharing.agreements as agreements
		d.row_filter == {}
	}
}

test_row_filter_tie_broken_by_agreement_id if {
	inp := fx.inputs.request
	every agreements in [fx.agreement_sets.filter_tie, fx.agreement_sets.filter_tie_reversed] {
		d := decision.decision with input as inp with data.allmende.sharing.agreements as agreements
		d.row_filter == {"district": {"eq": "Nord"}}
		d.mask == {"x": "redact", "y": "redact"}
		d.agreements == ["a-first", "b-second"]
	}
}

# --- mask kinds --------------------------------------------------------------------------

test_each_mask_kind_passes_through if {
	inp := fx.inputs.request
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.mask_kinds
	d.mask == {
		"holder": "redact",
		"plate": "hash:ka-ps-masks",
		"geom": "coarsen:2",
		"free": "bucket:50",
		"rate": "bucket:0.5",
	}
}

# Masked the same way by both: kept; masked differently (another kind, another width, a
# hash against a redaction): redacted.
test_same_field_masked_differently_is_redacted if {
	inp := fx.inputs.request
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.mask_conflict
	d.mask == {"plate": "redact", "geom": "coarsen:2", "free": "redact"}
}

# Two agreements hash with two salts: no single hash is right, so the field is redacted.
test_two_hashes_of_one_field_are_redacted if {
	inp := fx.inputs.request
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.two_hashes
	d.mask == {"plate": "redact"}
}

test_example_statistics_agreement_hashes_with_its_own_id if {
	inp := fx.inputs.stats_pirmasens
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreements
	d.allow == true
	d.mask == {"holder": "redact", "plate": "hash:ka-permit-statistics-2026"}
	d.row_filter == {"kind": {"ne": "care"}}
	d.agreements == ["ka-permit-statistics-2026"]
}

# --- row filter operators ----------------------------------------------------------------

test_each_row_filter_op_passes_through if {
	inp := fx.inputs.request
	every a in fx.agreement_sets.row_filter_ops {
		d := decision.decision with input as inp with data.allmende.sharing.agreements as [a]
		d.row_filter == a.row_filter
		count(d.row_filter.f) == 1
	}
	# Not `some op, _ in …` in a set comprehension: regopy 1.5.2 cannot parse it.
	ops := {op | some a in fx.agreement_sets.row_filter_ops; some op in object.keys(a.row_filter.f)}
	ops == {"eq", "ne", "lt", "le", "gt", "ge", "in"}
}

# --- aggregate-only grants ---------------------------------------------------------------

test_aggregate_only_grant if {
	every name in ["aggregate", "request", "subscribe"] {
		inp := fx.inputs[name]
		d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.aggregate_only
		d.allow == true
		d.min_group_size == 5
		d.agreements == ["agg-5"]
	}
}

test_example_statistics_agreement_is_aggregate_only if {
	every name in ["stats_pirmasens", "stats_wnd", "stats_query"] {
		inp := fx.inputs[name]
		d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreements
		d.min_group_size == 5
		d.requests_per_minute == 30
	}
}

# The most restrictive group size wins, even over an agreement that grants rows.
test_min_group_size_is_the_largest if {
	inp := fx.inputs.aggregate
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.aggregate_and_rows
	d.min_group_size == 10
	d.agreements == ["agg-10", "agg-5", "rows"]
}

test_rows_grant_has_no_group_size if {
	inp := fx.inputs.request
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.bare
	d.allow == true
	d.min_group_size == 0
	d.requests_per_minute == 0
	d.mask == {}
	d.row_filter == {}
	d.max_rows == 10000
}

# --- quotas ------------------------------------------------------------------------------

test_quotas_merge_to_the_smallest_positive if {
	inp := fx.inputs.request
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.quotas
	d.requests_per_minute == 30
	d.agreements == ["q-30", "q-60", "q-none", "q-zero"]
}

test_one_quota if {
	inp := fx.inputs.request
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.one_quota
	d.requests_per_minute == 60
}

test_no_quota_is_zero if {
	inp := fx.inputs.request
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.no_quota
	d.requests_per_minute == 0
}

# --- groups ------------------------------------------------------------------------------

test_group_member_granted if {
	inp := fx.inputs.sankt_wendel
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.group
	d.allow == true
	d.agreements == ["ka-group"]
	inp2 := fx.inputs.zweibruecken
	not decision.decision.allow with input as inp2 with data.allmende.sharing.agreements as fx.agreement_sets.group
}

# --- the document itself -----------------------------------------------------------------

test_policy_version_from_settings if {
	inp := fx.inputs.request
	d := decision.decision with input as inp
		with data.allmende.sharing.agreements as fx.agreements
		with data.allmende.settings as fx.settings_sets.versioned
	d.policy_version == "sha256:0123456789ab"
}

test_reasons_sorted_and_never_empty if {
	every inp in fx.samples {
		d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreements
		count(d.reasons) > 0
		d.reasons == sort(d.reasons)
	}
}

test_every_decision_has_every_key if {
	keys := {
		"allow", "reasons", "mask", "row_filter", "max_rows", "policy_version",
		"way_in", "agreements", "min_group_size", "requests_per_minute",
	}
	every inp in fx.samples {
		d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreements
		object.keys(d) == keys
	}
}

test_fallback_reason_when_no_rule_explains if {
	inp := fx.inputs.request
	d := decision.decision with input as inp
		with data.allmende.sharing.agreements as []
		with data.allmende.baseline.deny as set()
	d.allow == false
	d.reasons == ["no rule allows this request"]
}

test_unknown_classification_decision if {
	inp := fx.inputs.secret
	d := decision.decision with input as inp with data.allmende.sharing.agreements as fx.agreements
	d.allow == false
	d.reasons == ["dataset kaiserslautern/parking-permits has unknown classification secret (known: internal, open, restricted)"]
}
