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

# Set by the policy engine (allmende.policy.PolicyEngine); both optional. Refer to them by
# their full paths: a reference to data.allmende as a whole, or through an `import data.…`
# alias, makes regorus evaluate every rule of the packages below it, on every request.
default default_max_rows := 10000

default_max_rows := data.allmende.settings.default_max_rows

default policy_version := "unversioned"

policy_version := data.allmende.settings.policy_version

decision := {
	"allow": true,
	"reasons": sort(data.allmende.baseline.grants),
	"mask": obligations.mask,
	"row_filter": obligations.row_filter,
	"max_rows": obligations.max_rows,
	"policy_version": policy_version,
} if {
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
} else := {"mask": {}, "row_filter": {}, "max_rows": default_max_rows}

# One matching agreement, the usual case: its obligations as written.
agreement_obligations([a]) := {
	"mask": object.get(a, "mask", {}),
	"row_filter": object.get(a, "row_filter", {}),
	"max_rows": min([default_max_rows, object.get(a, "max_rows", default_max_rows)]),
}

# Several matching agreements.
#  * mask: every field that any of them masks (the union, so the most restrictive).
#  * row_filter: the filter of ONE of them, never a mix. Rule: the agreement that masks the
#    fewest fields wins; among those, the one whose id sorts first. Taking the least
#    [mask count, id] pair makes the choice independent of the order of the list.
#  * max_rows: the smallest limit any of them or the settings set.
agreement_obligations(matching) := {
	"mask": {field: strictest(kinds) |
		some a in matching
		some field, _ in object.get(a, "mask", {})
		# Not `kind := b.mask[field]`: regorus' VM (0.13) puts "<undefined>" in the
		# set for an agreement that does not mask the field, where Rego leaves it out.
		kinds := {kind | some b in matching; some kind in [b.mask[field]]}
	},
	"row_filter": object.get(primary, "row_filter", {}),
	"max_rows": min({default_max_rows} | {n | some a in matching; n := a.max_rows; is_number(n)}),
} if {
	count(matching) > 1
	least := min({[count(object.get(a, "mask", {})), a.agreement] | some a in matching})
	some primary in matching
	primary.agreement == least[1]
}

# "redact" replaces the value entirely, so it is at least as strict as any other kind: a
# field that agreements mask in different ways is redacted.
strictest(kinds) := kind if {
	count(kinds) == 1
	some kind in kinds
} else := "redact"
