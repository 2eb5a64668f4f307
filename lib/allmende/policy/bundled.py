"""Where the policies that ship with allmende live: the repository's ``policies/`` directory.

allmende is installed editable (one distribution, the repository is the install), so the
directory is found from this file's place: ``lib/allmende/policy/`` → repository root.
"""

from __future__ import annotations

from pathlib import Path

from allmende.errors import PolicyError

__all__ = ["bundled_example_agreements_dir", "bundled_policy_dir"]

_REPO_ROOT = Path(__file__).resolve().parents[3]
_POLICY_DIR = _REPO_ROOT / "policies"


def bundled_policy_dir() -> Path:
    """The bundled ``policies/`` directory (Rego under ``policies/allmende/``).

    Raises PolicyError when it is missing, e.g. when allmende was installed from a wheel
    instead of from the repository; then pass a policy directory explicitly.
    """
    if not (_POLICY_DIR / "allmende").is_dir():
        raise PolicyError(
            f"the bundled policies are missing: expected {_POLICY_DIR / 'allmende'} "
            "(install allmende from its repository with `pip install -e .`, "
            "or give a policy directory explicitly)"
        )
    return _POLICY_DIR


def bundled_example_agreements_dir() -> Path:
    """The example sharing agreements the demo uses (``policies/examples/agreements``).

    Raises PolicyError when the directory is missing.
    """
    path = bundled_policy_dir() / "examples" / "agreements"
    if not path.is_dir():
        raise PolicyError(f"the example agreements are missing: expected {path}")
    return path
