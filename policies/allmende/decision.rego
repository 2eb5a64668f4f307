# METADATA
# title: Decision
# description: |
#   Combines the cluster baseline and the sharing agreements into the one document the
#   gateway enforces, data.allmende.decision.decision:
#     {"allow", "reasons", "mask", "row_filter", "max_rows", "policy_version"}
#   reasons is a sorted, non-empty list saying why the request was allowed or refused.
#   A refusal carries no mask, no row filter and max_rows 0.
package allmende.decision

import rego.v1


# Set by the policy engine (allmende.policy.PolicyEngine); both optional. (Refer to the
# settings by their full path: a reference to data.allmende as a whole would evaluate every
# rule of every allmende package.)
default default_max_rows := 10000

default_max_rows := data.allmende.settings.default_max_rows

default policy_version := "unversioned"

policy_version := data.allmende.settings.policy_version

decision := object.union(
	{"allow": true, "reasons": sort(data.allmende.baseline.grants), "policy_version": policy_version},
	obligations,
) if {
	data.allmende.baseline.allow
} else := {
	"allow": false,
	"reasons": refusal_reasons,
	"mask": {},
	"row_filter": {},
	"max_rows": 0,
	"policy_version": policy_version,
}

refusal_reasons := sort(data.allmende.baseline.deny) if count(data.allmende.baseline.deny) > 0
else := ["no rule allows this request"]

# An agreement's obligations bind only when an agreement is the way in; the owner and the
# readers of an open dataset get the dataset as it is, up to the default row limit.
obligations := agreement_obligations(data.allmende.agreements.matching) if {
	data.allmende.baseline.way_in == "agreement"
}
else := {"mask": {}, "row_filter": {}, "max_rows": default_max_rows}

agreement_obligations(matching) := {
	"mask": union_of_masks(matching),
	"row_filter": object.get(primary(matching), "row_filter", {}),
	"max_rows": min({default_max_rows} | {n | some a in matching; n := a.max_rows; is_number(n)}),
}

# mask: every field any matching agreement masks. "redact" replaces the value entirely, so
# it is at least as strict as any other kind: a field that agreements mask in different
# ways is redacted.
union_of_masks(matching) := {field: strictest(kinds) |
	some a in matching
	some field, _ in object.get(a, "mask", {})
	kinds := {kind | some b in matching; kind := b.mask[field]}
}

strictest(kinds) := kind if {
	count(kinds) == 1
	some kind in kinds
} else := "redact"

# row_filter: the filter of ONE matching agreement, never a mix. Rule: the agreement that
# masks the fewest fields wins; among those, the one whose id sorts first. Sorting
# [mask count, id] pairs makes the choice independent of the order of the agreement list.
primary(matching) := a if {
	ranked := sort([[count(object.get(b, "mask", {})), b.agreement] | some b in matching])
	some a in matching
	a.agreement == ranked[0][1]
}
