# METADATA
# title: Cluster baseline
# description: |
#   Who may read a dataset at all. Only members of the owner's cluster get in; the owner
#   always reads its own datasets; open datasets are readable by every cluster member;
#   internal and restricted datasets only under a sharing agreement (allmende.agreements).
package allmende.baseline

import rego.v1

# Classifications a dataset descriptor may carry (proto: allmende.v1.Classification).
classifications := {"open", "internal", "restricted"}

# Classifications that only a sharing agreement opens to members other than the owner.
agreement_classifications := {"internal", "restricted"}

# Query and Subscribe read records; Aggregate reads counts, sums and averages over groups
# (an aggregate-only agreement grants nothing else: the gateway enforces min_group_size).
actions := {"aggregate", "query", "subscribe"}

default allow := false

# Allowed when the action is known and there is a way in. Every way in checks membership
# itself, so none of the refusals below can hold at the same time (baseline_test checks
# this); `deny` only explains a refusal and is not evaluated for allowed requests.
# On the way of every request the sets are written out (the same as `actions` and
# `agreement_classifications`): a reference to a rule costs regorus' VM a call.
allow if {
	input.action in {"aggregate", "query", "subscribe"}
	way_in
}

# How the caller gets in: "owner", "open" or "agreement"; undefined when there is no way.
# Every request passes here, so is_member and is_owner are written out (a rule reference
# costs regorus' VM a call), and needs_agreement too: the owner took the first branch.
way_in := "owner" if {
	input.subject.cluster == input.resource.cluster
	input.subject.member == input.resource.owner
} else := "open" if {
	input.subject.cluster == input.resource.cluster
	input.resource.classification == "open"
} else := "agreement" if {
	input.subject.cluster == input.resource.cluster
	input.resource.classification in {"internal", "restricted"}
	count(data.allmende.agreements.matching) > 0
}

# way_in writes these three out: a change here must be made there too.
is_member if input.subject.cluster == input.resource.cluster

is_owner if {
	is_member
	input.subject.member == input.resource.owner
}

# A member other than the owner asks for a dataset that only an agreement opens.
needs_agreement if {
	is_member
	not is_owner
	input.resource.classification in agreement_classifications
}

# --- why it is allowed ---------------------------------------------------------------------

# One rule with the agreement case first, not a set built by three rules: regorus evaluates
# every rule that adds to a set, on every request. Empty for a refusal.
default grants := set()

grants := data.allmende.agreements.grants if {
	way_in == "agreement"
} else := {"owner reads its own dataset"} if {
	way_in == "owner"
} else := {sprintf("open dataset: any member of cluster %s may read it", [input.resource.cluster])} if {
	way_in == "open"
}

# --- ways out: why a request is refused ----------------------------------------------------

deny contains msg if {
	not is_member
	msg := sprintf("%s is not a member of cluster %s", [member_name, cluster_name])
}

deny contains msg if {
	not input.action in actions
	# concat, not sprintf("%s", [concat(…)]): regopy 1.5.2 quotes a computed string there.
	msg := concat("", ["action ", action_name, " is not one of: ", concat(", ", sort(actions))])
}

# The owner reads its own datasets whatever their label; everyone else is refused until the
# label is one the cluster knows.
deny contains msg if {
	is_member
	not is_owner
	not input.resource.classification in classifications
	msg := concat("", [
		"dataset ", owner_name, "/", dataset_name, " has unknown classification ",
		classification_name, " (known: ", concat(", ", sort(classifications)), ")",
	])
}

deny contains msg if {
	needs_agreement
	not way_in
	some msg in data.allmende.agreements.deny
}

# --- names for messages, robust against missing input fields -------------------------------

default member_name := "(unknown member)"

member_name := sprintf("%v", [input.subject.member])

default cluster_name := "(unknown cluster)"

cluster_name := sprintf("%v", [input.resource.cluster])

default owner_name := "(unknown owner)"

owner_name := sprintf("%v", [input.resource.owner])

default dataset_name := "(unknown dataset)"

dataset_name := sprintf("%v", [input.resource.dataset])

default classification_name := "(none)"

classification_name := sprintf("%v", [input.resource.classification])

default action_name := "(none)"

action_name := sprintf("%v", [input.action])
