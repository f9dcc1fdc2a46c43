"""The posture score: one number from 0 (bad) to 100 (nothing found).

Formula (shown by ``cyphrs scan --help`` and in the README):

    certificate score = max(0, 100 - sum of the weights of its findings)
    weights: critical 50, high 25, medium 10, low 3, info 0
    score = the mean of the certificate scores, rounded down; 100 for no certificates

Each distinct certificate counts once, wherever it was found. A set is as good as its
average certificate: one bad certificate among many lowers the score a little, a
systematic problem (every certificate SHA-1) lowers it a lot.
"""

from __future__ import annotations

from collections.abc import Iterable

from cyphrs_cli.checks.model import Severity

WEIGHTS = {
    Severity.CRITICAL: 50,
    Severity.HIGH: 25,
    Severity.MEDIUM: 10,
    Severity.LOW: 3,
    Severity.INFO: 0,
}

FORMULA = (
    "score = mean over distinct certificates of max(0, 100 - sum of finding weights),"
    " rounded down (critical 50, high 25, medium 10, low 3); 100 when nothing was scanned"
)


def certificate_score(severities: Iterable[Severity]) -> int:
    return max(0, 100 - sum(WEIGHTS[s] for s in severities))


def posture_score(per_certificate: list[list[Severity]]) -> int:
    if not per_certificate:
        return 100
    return sum(certificate_score(s) for s in per_certificate) // len(per_certificate)
