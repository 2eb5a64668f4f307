package allmende.agreements_test

import rego.v1

import data.allmende.agreements
import data.allmende.fixtures_test as fx

test_agreement_grants if {
	inp := fx.inputs.request
	[a.agreement | some a in agreements.matching] == ["ka-ps-permits-2026"] with input as inp
		with data.allmende.sharing.agreements as fx.agreements
	agreements.grants == {"agreement ka-ps-permits-2026 grants pirmasens access for traffic-planning"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_no_agreements_at_all if {
	# No data.allmende.sharing.agreements loaded: nothing matches, and it says so.
	inp := fx.inputs.request
	count(agreements.matching) == 0 with input as inp
	agreements.deny == {"no agreement covers pirmasens for dataset kaiserslautern/parking-permits"} with input as inp
}

test_other_member_not_covered if {
	inp := fx.inputs.zweibruecken
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreements
	agreements.deny == {"no agreement covers zweibruecken for dataset kaiserslautern/parking-permits"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_other_dataset_not_covered if {
	inp := fx.inputs.other_dataset
	agreements.deny == {"no agreement covers pirmasens for dataset kaiserslautern/parking-occupancy"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_other_provider_not_covered if {
	inp := fx.inputs.other_provider
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreements
}

test_wrong_purpose if {
	inp := fx.inputs.wrong_purpose
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreements
	agreements.deny == {
		"purpose marketing is not among the purposes of agreement ka-ps-permits-2026: [traffic-planning]",
		"purpose marketing is not among the purposes of agreement ka-permit-statistics-2026: [statistics]",
	} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_expired if {
	inp := fx.inputs.expired
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.ka_ps_only
	agreements.deny == {"agreement ka-ps-permits-2026 expired at 2028-01-01T00:00:00+00:00"} with input as inp
		with data.allmende.sharing.agreements as fx.agreement_sets.ka_ps_only
}

test_valid_until_is_exclusive if {
	inp := fx.inputs.at_valid_until
	agreements.deny == {"agreement ka-ps-permits-2026 expired at 2028-01-01T00:00:00+00:00"} with input as inp
		with data.allmende.sharing.agreements as fx.agreement_sets.ka_ps_only
}

test_valid_from_is_inclusive if {
	inp := fx.inputs.at_valid_from
	count(agreements.matching) == 1 with input as inp with data.allmende.sharing.agreements as fx.agreements
}

test_not_yet_valid if {
	inp := fx.inputs.not_yet_valid
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.ka_ps_only
	agreements.deny == {"agreement ka-ps-permits-2026 is not yet valid: it starts at 2026-01-01T00:00:00+00:00"} with input as inp
		with data.allmende.sharing.agreements as fx.agreement_sets.ka_ps_only
}

# Times are compared as instants, not as strings: 23:30 at UTC-1 is already 2027 in UTC.
test_now_with_offset_compared_as_instant if {
	inp := fx.inputs.offset_now_expired
	agreements.deny == {"agreement ka-ps-permits-2026 expired at 2028-01-01T00:00:00+00:00"} with input as inp
		with data.allmende.sharing.agreements as fx.agreement_sets.ka_ps_only
}

test_without_valid_until_never_expires if {
	inp := fx.inputs.far_future
	count(agreements.matching) == 1 with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.open_ended
}

test_wrong_purpose_and_expired_both_reported if {
	inp := fx.inputs.wrong_purpose_expired
	agreements.deny == {
		"purpose marketing is not among the purposes of agreement ka-ps-permits-2026: [traffic-planning]",
		"agreement ka-ps-permits-2026 expired at 2028-01-01T00:00:00+00:00",
	} with input as inp
		with data.allmende.sharing.agreements as fx.agreement_sets.ka_ps_only
}

test_missing_now_explained if {
	inp := fx.inputs.no_now
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.ka_ps_only
	agreements.deny == {"input.now is missing: the gateway must say when the request is made"} with input as inp
		with data.allmende.sharing.agreements as fx.agreement_sets.ka_ps_only
}

test_no_reasons_when_something_matches if {
	# ka-wnd does not cover pirmasens, but ka-ps grants: nothing to explain.
	inp := fx.inputs.request
	count(agreements.deny) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreements
}

# consumers may name groups; the loader expands them into members, which Rego matches on.
test_group_members_match if {
	every name in ["request", "sankt_wendel"] {
		inp := fx.inputs[name]
		[a.agreement | some a in agreements.matching] == ["ka-group"] with input as inp
			with data.allmende.sharing.agreements as fx.agreement_sets.group
	}
	inp := fx.inputs.zweibruecken
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreement_sets.group
}

test_example_group_grants_statistics_to_both_partners if {
	every name in ["stats_pirmasens", "stats_wnd"] {
		inp := fx.inputs[name]
		[a.agreement | some a in agreements.matching] == ["ka-permit-statistics-2026"] with input as inp
			with data.allmende.sharing.agreements as fx.agreements
	}
}

# Only members count: consumers is what the steward wrote, kept for people to read.
test_consumers_without_members_do_not_match if {
	inp := fx.inputs.request
	count(agreements.matching) == 0 with input as inp
		with data.allmende.sharing.agreements as fx.agreement_sets.consumers_not_members
	agreements.deny == {"no agreement covers pirmasens for dataset kaiserslautern/parking-permits"} with input as inp
		with data.allmende.sharing.agreements as fx.agreement_sets.consumers_not_members
}
