"""Policy checks: profiles that allow long-lived leaves, and issuing CAs without name
constraints although they may sign server certificates.

Short lifetimes are cyphrs' revocation story; a profile whose ``max_ttl`` runs to months
quietly gives that up. An intermediate without name constraints that signs serverAuth
certificates can vouch for any host name: its compromise is not contained to the names
this organisation owns.
"""

from __future__ import annotations

from cryptography import x509

from cyphrs_cli.checks.model import CheckContext, Finding, Severity
from cyphrs_cli.durations import format_duration

SERVER_AUTH = "serverAuth"


def check(context: CheckContext) -> list[Finding]:
    from cyphrs_cli.profiles.model import load_profiles

    findings: list[Finding] = []
    profiles = load_profiles(context.home.profiles_dir)
    limit = context.thresholds.max_leaf_ttl
    for profile in sorted(profiles.values(), key=lambda p: p.name):
        if profile.max_ttl > limit:
            findings.append(
                Finding(
                    id="policy.long_max_ttl",
                    severity=Severity.MEDIUM,
                    title=f"profile {profile.name!r} allows certificates for up to"
                    f" {format_duration(profile.max_ttl)} (above {format_duration(limit)})",
                    why="a leaked key of a long-lived certificate stays usable until a CRL"
                    " reaches every relying party; short lifetimes make that window small",
                    fix=f"lower max_ttl in {profile.name}.toml, then cyphrs profiles set"
                    f" {profile.name}.toml",
                    subject=profile.name,
                )
            )
    for authority in context.authorities():
        if authority["role"] != "intermediate" or authority["pem"] is None:
            continue
        if authority["status"] == "revoked":
            continue
        name = str(authority["name"])
        certificate = x509.load_pem_x509_certificate(str(authority["pem"]).encode())
        try:
            certificate.extensions.get_extension_for_class(x509.NameConstraints)
            continue
        except x509.ExtensionNotFound:
            pass
        servers = [
            p.name
            for p in profiles.values()
            if SERVER_AUTH in p.extended_key_usage and (not p.issuers or name in p.issuers)
        ]
        if servers:
            findings.append(
                Finding(
                    id="policy.no_name_constraints",
                    severity=Severity.MEDIUM,
                    title=f"issuing CA {name!r} has no name constraints but may sign server"
                    f" certificates (profiles: {', '.join(sorted(servers))})",
                    why="without name constraints, relying parties accept any host name or"
                    " trust domain it signs; a compromise is not contained to your names",
                    fix="cyphrs create-intermediate --name ... --trust-domain TD"
                    " --name-constraints [--permit-dns YOUR.DOMAIN], then move issuance to it",
                    subject=name,
                )
            )
    return findings
