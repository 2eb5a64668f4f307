# METADATA
# title: Decision
# description: |
#   Combines the cluster baseline and the sharing agreements into the one document the
#   gateway enforces, data.allmende.decision.decision:
#     {"allow", "reasons", "policy_version", "mask", "row_filter", "max_rows",
#      "way_in", "agreements", "min_group_size", "requests_per_minute"}
#   reasons is a sorted, non-empty list saying why the request was allowed or refused.
#   A refusal carries no obligations: mask and row_filter empty, max_rows 0, way_in "",
#   agreements [], min_group_size 0, requests_per_minute 0.
package allmende.decision

import rego.v1

# Set by the policy engine (allmende.policy.PolicyEngine); both optional. Refer to them by
# their full paths: a reference to data.allmende as a whole, or through an `import data.…`
# alias, makes regorus evaluate every rule of the packages below it, on every request.
default default_max_rows := 10000

default_max_rows := data.allmende.settings.default_max_rows

default policy_version := "unversioned"

policy_version := data.allmende.settings.policy_version

# The usual request, written out first: a member of the cluster, not the owner, asks for an
# internal or restricted dataset under exactly one agreement. regorus' VM pays a few
# microseconds for every rule it enters, and this branch enters four instead of a dozen;
# its document is the one the general branch below produces for the same input
# (tests/unit/test_policy_engines_agree.py decides every test input both ways). The reasons
# still come from data.allmende.agreements.grants, so grant messages that an owner's own
# Rego adds to that set are given here too.
decision := {
	"allow": true,
	"reasons": sort(data.allmende.agreements.grants),
	"mask": mask,
	"row_filter": row_filter,
	"max_rows": {true: limit, false: n}[limit <= n],
	"policy_version": policy_version,
	"way_in": "agreement",
	"agreements": [a.agreement],
	"min_group_size": min_group_size,
	"requests_per_minute": per_minute,
} if {
	input.action in {"aggregate", "query", "subscribe"}
	input.subject.cluster == input.resource.cluster
	input.subject.member != input.resource.owner
	input.resource.classification in {"internal", "restricted"}
	[a] := data.allmende.agreements.matching
	# An agreement without one of these (hand-written data) takes the general branch.
	mask := a.mask
	row_filter := a.row_filter
	min_group_size := a.min_group_size
	per_minute := a.requests_per_minute
	limit := default_max_rows
	n := object.get(a, "max_rows", limit)
} else := {
	"allow": true,
	"reasons": sort(data.allmende.baseline.grants),
	"mask": o.mask,
	"row_filter": o.row_filter,
	"max_rows": o.max_rows,
	"policy_version": policy_version,
	"way_in": data.allmende.baseline.way_in,
	"agreements": o.agreements,
	"min_group_size": o.min_group_size,
	"requests_per_minute": o.requests_per_minute,
} if {
	data.allmende.baseline.allow
	o := obligations # once: regorus' VM pays for every reference to a rule, cached or not
} else := {
	"allow": false,
	"reasons": refusal_reasons,
	"mask": {},
	"row_filter": {},
	"max_rows": 0,
	"policy_version": policy_version,
	"way_in": "",
	"agreements": [],
	"min_group_size": 0,
	"requests_per_minute": 0,
}

refusal_reasons := sort(data.allmende.baseline.deny) if count(data.allmende.baseline.deny) > 0
else := ["no rule allows this request"]

# An agreement's obligations bind only when an agreement is the way in; the owner and the
# readers of an open dataset get the dataset as it is, up to the default row limit.
# The usual case, one matching agreement as the loader writes it (every key present), is
# written out: a function call costs regorus' VM a few microseconds per request, so even
# the lesser of the two row limits is picked by indexing with the comparison, not by
# `lesser`. Anything else (several agreements, hand-written data without some keys) goes
# through agreement_obligations.
obligations := {
	"mask": a.mask,
	"row_filter": a.row_filter,
	"max_rows": {true: limit, false: n}[limit <= n],
	"agreements": [a.agreement],
	"min_group_size": a.min_group_size,
	"requests_per_minute": a.requests_per_minute,
} if {
	data.allmende.baseline.way_in == "agreement"
	[a] := data.allmende.agreements.matching
	limit := default_max_rows
	n := object.get(a, "max_rows", limit)
} else := agreement_obligations(data.allmende.agreements.matching) if {
	data.allmende.baseline.way_in == "agreement"
} else := {
	"mask": {},
	"row_filter": {},
	"max_rows": default_max_rows,
	"agreements": [],
	"min_group_size": 0,
	"requests_per_minute": 0,
}

# One matching agreement: its obligations as written; object.get for the keys that
# hand-written agreement data may leave out.
agreement_obligations([a]) := {
	"mask": object.get(a, "mask", {}),
	"row_filter": object.get(a, "row_filter", {}),
	"max_rows": lesser(default_max_rows, object.get(a, "max_rows", default_max_rows)),
	"agreements": [a.agreement],
	"min_group_size": object.get(a, "min_group_size", 0),
	"requests_per_minute": object.get(a, "requests_per_minute", 0),
}

# Several matching agreements.
#  * mask: every field that any of them masks (the union, so the most restrictive); a field
#    they mask in different ways (two kinds, or hashes with two agreements' salts) is
#    redacted.
#  * row_filter: the filter of ONE of them, never a mix. Rule: the agreement that masks the
#    fewest fields wins; among those, the one whose id sorts first, so the choice does not
#    depend on the order of the list.
#  * max_rows: the smallest limit any of them or the settings set.
#  * min_group_size: the largest (most restrictive); 0 only when none is aggregate-only.
#  * requests_per_minute: the smallest quota any of them sets; 0 (none) when none sets one.
agreement_obligations(matching) := {
	"mask": {field: strictest(kinds) |
		some a in matching
		some field, _ in object.get(a, "mask", {})
		# Not `kind := b.mask[field]`: regorus' VM (0.13) puts "<undefined>" in the
		# set for an agreement that does not mask the field, where Rego leaves it out.
		kinds := {kind | some b in matching; some kind in [b.mask[field]]}
	},
	"row_filter": object.get(primary, "row_filter", {}),
	"max_rows": smallest({default_max_rows} | {n | some a in matching; n := a.max_rows; is_number(n)}),
	"agreements": sort([a.agreement | some a in matching]),
	"min_group_size": largest({0} | {n | some a in matching; n := a.min_group_size; is_number(n)}),
	"requests_per_minute": least_positive({n |
		some a in matching
		n := a.requests_per_minute
		is_number(n)
		n > 0
	}),
} if {
	count(matching) > 1
	fewest := smallest({count(object.get(a, "mask", {})) | some a in matching})
	first := smallest({a.agreement | some a in matching; count(object.get(a, "mask", {})) == fewest})
	some primary in matching
	primary.agreement == first
}

# "redact" replaces the value entirely, so it is at least as strict as any other kind: a
# field that agreements mask in different ways is redacted.
strictest(kinds) := kind if {
	count(kinds) == 1
	some kind in kinds
} else := "redact"

least_positive(quotas) := smallest(quotas) if count(quotas) > 0
else := 0

# Not the built-ins min and max: regopy 1.5.2 compares numbers there as text
# (min([10000, 500]) is 10000), and the policies must decide alike in every engine.
smallest(values) := v if {
	some v in values
	every w in values { v <= w }
}

largest(values) := v if {
	some v in values
	every w in values { v >= w }
}

lesser(x, y) := x if x <= y
else := y
