"""`allmende bench`: the speed figures of issue 5, each measured against a bare baseline in one run."""
