package allmende.baseline_test

import rego.v1

import data.allmende.baseline
import data.allmende.fixtures_test as fx

test_owner_reads_its_own_dataset if {
	inp := fx.inputs.owner
	baseline.allow with input as inp with data.allmende.sharing.agreements as []
	baseline.grants == {"owner reads its own dataset"} with input as inp
		with data.allmende.sharing.agreements as []
}

test_owner_reads_its_own_dataset_whatever_its_classification if {
	inp := fx.inputs.owner_secret
	baseline.allow with input as inp
}

test_open_dataset_any_member if {
	inp := fx.inputs.open
	baseline.allow with input as inp with data.allmende.sharing.agreements as []
	baseline.grants == {"open dataset: any member of cluster suedwest may read it"} with input as inp
		with data.allmende.sharing.agreements as []
}

test_non_member_denied if {
	inp := fx.inputs.non_member
	not baseline.allow with input as inp with data.allmende.sharing.agreements as fx.agreements
	baseline.deny == {"luzern is not a member of cluster suedwest"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_non_member_denied_even_for_open_dataset if {
	inp := fx.inputs.non_member_open
	not baseline.allow with input as inp
	"luzern is not a member of cluster suedwest" in baseline.deny with input as inp
}

# A member of another cluster that happens to share the owner's name is not the owner.
test_namesake_in_other_cluster_is_not_owner if {
	inp := fx.inputs.namesake
	not baseline.allow with input as inp
}

test_internal_without_agreement_denied if {
	inp := fx.inputs.request
	not baseline.allow with input as inp with data.allmende.sharing.agreements as []
	baseline.deny == {"no agreement covers pirmasens for dataset kaiserslautern/parking-permits"} with input as inp
		with data.allmende.sharing.agreements as []
}

test_internal_with_agreement_allowed if {
	inp := fx.inputs.request
	baseline.allow with input as inp with data.allmende.sharing.agreements as fx.agreements
	baseline.way_in == "agreement" with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_restricted_needs_an_agreement_too if {
	inp := fx.inputs.restricted
	not baseline.allow with input as inp with data.allmende.sharing.agreements as []
	baseline.allow with input as inp with data.allmende.sharing.agreements as fx.agreements
}

test_unknown_classification_denied if {
	inp := fx.inputs.secret
	not baseline.allow with input as inp with data.allmende.sharing.agreements as fx.agreements
	baseline.deny == {"dataset kaiserslautern/parking-permits has unknown classification secret (known: internal, open, restricted)"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_unknown_action_denied if {
	inp := fx.inputs.delete
	not baseline.allow with input as inp with data.allmende.sharing.agreements as fx.agreements
	baseline.deny == {"action delete is not one of: aggregate, query, subscribe"} with input as inp
		with data.allmende.sharing.agreements as fx.agreements
}

test_subscribe_allowed_like_query if {
	inp := fx.inputs.subscribe
	baseline.allow with input as inp with data.allmende.sharing.agreements as fx.agreements
}

# Aggregate is authorised like Query; what an aggregate-only grant allows is the gateway's
# to enforce from the decision's min_group_size.
test_aggregate_allowed_like_query if {
	inp := fx.inputs.aggregate
	baseline.allow with input as inp with data.allmende.sharing.agreements as fx.agreements
	baseline.way_in == "agreement" with input as inp with data.allmende.sharing.agreements as fx.agreements
	inp2 := fx.inputs.stats_pirmasens
	baseline.allow with input as inp2 with data.allmende.sharing.agreements as fx.agreements
}

test_empty_input_denied_with_reasons if {
	inp := fx.inputs.empty
	not baseline.allow with input as inp
	baseline.deny == {
		"(unknown member) is not a member of cluster (unknown cluster)",
		"action (none) is not one of: aggregate, query, subscribe",
	} with input as inp
}

# allow is "some way in", deny only explains refusals: they must never hold together, and
# one of them must always hold.
test_allow_and_deny_never_both if {
	every inp in fx.samples {
		not allowed_and_denied with input as inp with data.allmende.sharing.agreements as fx.agreements
	}
}

test_every_refusal_has_a_reason if {
	every inp in fx.samples {
		allowed_or_explained with input as inp with data.allmende.sharing.agreements as fx.agreements
	}
}

allowed_and_denied if {
	baseline.allow
	count(baseline.deny) > 0
}

allowed_or_explained if baseline.allow

allowed_or_explained if count(baseline.deny) > 0
