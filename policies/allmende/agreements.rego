# METADATA
# title: Sharing agreements
# description: |
#   Interprets the sharing agreements that stewards write as YAML and allmende compiles into
#   data.allmende.sharing.agreements (a list of objects, see policies/agreements.schema.json).
#   An agreement grants a request when it names the dataset's owner as provider, lists the
#   dataset, the calling member (among its `members`: the consumers with every group
#   expanded by the loader) and the request's purpose, and `now` lies in
#   [valid_from, valid_until). The list lives under "sharing" because data.allmende.agreements
#   is this package. Times are RFC 3339 with "+00:00" (regopy cannot parse a "Z"); the
#   loader adds each window in nanoseconds (valid_from_ns, valid_until_ns).
package allmende.agreements

import rego.v1

default listed := []

listed := data.allmende.sharing.agreements

# The gateway writes `now` (RFC 3339). A malformed time fails the whole evaluation in
# regorus (allmende reports a PolicyError); OPA would leave now_ns undefined and deny.
now_ns := time.parse_rfc3339_ns(input.now)

# The agreements that grant this request, in the order they are listed. Every request
# passes here, so the cheap tests come first and are written out (they are covers(a));
# regorus charges a few microseconds for every rule or function it enters. The loader
# writes every agreement's window as valid_from_ns/valid_until_ns too, so no agreement
# time is parsed per request. The list is read by its full path, not through `listed`, and
# `now` is parsed here (as now_ns is) for the few agreements that pass the cheap tests:
# each rule reference costs regorus' VM a call.
matching := [a |
	some a in data.allmende.sharing.agreements
	a.provider == input.resource.owner
	input.resource.dataset in a.datasets
	input.subject.member in a.members
	input.request.purpose in a.purposes
	now := time.parse_rfc3339_ns(input.now)
	a.valid_from_ns <= now
	now < a.valid_until_ns
]

grants contains msg if {
	some a in matching
	msg := sprintf(
		"agreement %s grants %s access for %s",
		[a.agreement, input.subject.member, input.request.purpose],
	)
}

# The agreement is between this provider and this member about this dataset, whatever
# the purpose and the date.
covers(a) if {
	a.provider == input.resource.owner
	input.resource.dataset in a.datasets
	input.subject.member in a.members
}

# valid_until is optional: an agreement without one never expires (its valid_until_ns is
# the loader's NO_END_NS, beyond any time the gateway can write).
expired(a) if {
	is_string(a.valid_until)
	now_ns >= a.valid_until_ns
}

# --- why nothing matched: only looked at when nothing did ----------------------------------

covering := [a | some a in listed; covers(a)]

deny contains msg if {
	count(matching) == 0
	count(covering) == 0
	msg := sprintf(
		"no agreement covers %s for dataset %s/%s",
		[member_name, owner_name, dataset_name],
	)
}

deny contains msg if {
	count(matching) == 0
	some a in covering
	not input.request.purpose in a.purposes
	# concat, not sprintf("%s", [concat(…)]): regopy 1.5.2 quotes a computed string there.
	msg := concat("", [
		"purpose ", purpose_name, " is not among the purposes of agreement ", a.agreement,
		": [", concat(", ", sort(a.purposes)), "]",
	])
}

deny contains msg if {
	count(matching) == 0
	some a in covering
	now_ns < a.valid_from_ns
	msg := sprintf("agreement %s is not yet valid: it starts at %s", [a.agreement, a.valid_from])
}

deny contains msg if {
	count(matching) == 0
	some a in covering
	expired(a)
	msg := sprintf("agreement %s expired at %s", [a.agreement, a.valid_until])
}

deny contains "input.now is missing: the gateway must say when the request is made" if {
	count(matching) == 0
	not input.now
}

# --- names for messages, robust against missing input fields -------------------------------

default member_name := "(unknown member)"

member_name := sprintf("%v", [input.subject.member])

default owner_name := "(unknown owner)"

owner_name := sprintf("%v", [input.resource.owner])

default dataset_name := "(unknown dataset)"

dataset_name := sprintf("%v", [input.resource.dataset])

default purpose_name := "(no purpose)"

purpose_name := sprintf("%v", [input.request.purpose])
