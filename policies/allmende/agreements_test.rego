package allmende.agreements_test

import rego.v1

import data.allmende.agreements
import data.allmende.fixtures_test as fx

test_agreement_grants if {
	[a.agreement | some a in agreements.matching] == ["ka-ps-permits-2026"] with input as fx.request
		with data.allmende.sharing.agreements as fx.agreements
	agreements.grants == {"agreement ka-ps-permits-2026 grants pirmasens access for traffic-planning"} with input as fx.request
		with data.allmende.sharing.agreements as fx.agreements
}

test_no_agreements_at_all if {
	# No data.allmende.sharing.agreements loaded: nothing matches, and it says so.
	count(agreements.matching) == 0 with input as fx.request
	agreements.deny == {"no agreement covers pirmasens for dataset kaiserslautern/parking-permits"} with input as fx.request
}

test_other_member_not_covered if {
	inp := fx.request_with(fx.asked_by("zweibruecken"))
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreements
	agreements.deny == {"no agreement covers zweibruecken for dataset kaiserslautern/parking-permits"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_other_dataset_not_covered if {
	inp := fx.request_with({"resource": {"dataset": "parking-occupancy"}})
	agreements.deny == {"no agreement covers pirmasens for dataset kaiserslautern/parking-occupancy"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_other_provider_not_covered if {
	inp := fx.request_with({"resource": {"owner": "homburg"}})
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreements
}

test_wrong_purpose if {
	inp := fx.request_with({"request": {"purpose": "marketing"}})
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreements
	agreements.deny == {"purpose marketing is not among the purposes of agreement ka-ps-permits-2026: [traffic-planning]"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_expired if {
	inp := fx.request_with({"now": "2027-03-01T08:00:00Z"})
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreements
	agreements.deny == {"agreement ka-ps-permits-2026 expired at 2027-01-01T00:00:00Z"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_valid_until_is_exclusive if {
	inp := fx.request_with({"now": "2027-01-01T00:00:00Z"})
	agreements.deny == {"agreement ka-ps-permits-2026 expired at 2027-01-01T00:00:00Z"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_valid_from_is_inclusive if {
	inp := fx.request_with({"now": "2026-01-01T00:00:00Z"})
	count(agreements.matching) == 1 with input as inp with data.allmende.sharing.agreements as fx.agreements
}

test_not_yet_valid if {
	inp := fx.request_with({"now": "2025-12-31T23:59:59Z"})
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreements
	agreements.deny == {"agreement ka-ps-permits-2026 is not yet valid: it starts at 2026-01-01T00:00:00Z"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

# Times are compared as instants, not as strings: 23:30 at UTC-1 is already 2027 in UTC.
test_now_with_offset_compared_as_instant if {
	inp := fx.request_with({"now": "2026-12-31T23:30:00-01:00"})
	agreements.deny == {"agreement ka-ps-permits-2026 expired at 2027-01-01T00:00:00Z"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_without_valid_until_never_expires if {
	open_ended := object.remove(fx.ka_ps, ["valid_until"])
	inp := fx.request_with({"now": "2099-01-01T00:00:00Z"})
	count(agreements.matching) == 1 with input as inp with data.allmende.sharing.agreements as [open_ended]
}

test_wrong_purpose_and_expired_both_reported if {
	inp := fx.request_with({"request": {"purpose": "marketing"}, "now": "2027-03-01T08:00:00Z"})
	agreements.deny == {
		"purpose marketing is not among the purposes of agreement ka-ps-permits-2026: [traffic-planning]",
		"agreement ka-ps-permits-2026 expired at 2027-01-01T00:00:00Z",
	} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_missing_now_explained if {
	inp := object.remove(fx.request, ["now"])
	count(agreements.matching) == 0 with input as inp with data.allmende.sharing.agreements as fx.agreements
	agreements.deny == {"input.now is missing: the gateway must say when the request is made"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_no_reasons_when_something_matches if {
	# ka-wnd does not cover pirmasens, but ka-ps grants: nothing to explain.
	count(agreements.deny) == 0 with input as fx.request with data.allmende.sharing.agreements as fx.agreements
}
