"""Which identity provider and which API the app talks to, and what follows from it.

The same code talks to Microsoft Entra ID (workforce, External ID, B2C), to the local
stand-in, and through OIDC_AUTHORITY to any standards-compliant OpenID Provider. Where
Entra ID's habits are not universal, the provider's discovery document decides:

* `prompt=select_account` is optional in OpenID Connect Core: sent only to Entra ID and to
  providers whose discovery lists it in `prompt_values_supported`;
* names on pages: "Microsoft Entra ID" / "Microsoft Graph" only when that is what the app
  talks to; otherwise the provider's host name (or PROVIDER_NAME) and "the API";
* the signed-in user is shown by the best claim present: a provider may put nothing but
  `sub` in its id tokens (profile claims at userinfo).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import app_config

# Microsoft Entra ID's sign-in hosts: the public cloud and the sovereign clouds.
ENTRA_HOSTS = {
    "login.microsoftonline.com", "login.microsoft.com", "login.windows.net", "sts.windows.net",
    "login.microsoftonline.us", "login.chinacloudapi.cn", "login.partner.microsoftonline.cn",
}
# Entra External ID and Azure AD B2C tenants live on subdomains of these.
ENTRA_HOST_SUFFIXES = (".ciamlogin.com", ".b2clogin.com")
GRAPH_HOSTS = {
    "graph.microsoft.com", "graph.microsoft.us", "dod-graph.microsoft.us", "microsoftgraph.chinacloudapi.cn",
}
ENTRA_NAME = "Microsoft Entra ID"
GRAPH_NAME = "Microsoft Graph"
# Graph's answers for a user carry these; any other JSON object is shown as a plain list.
GRAPH_PROFILE_FIELDS = ("displayName", "userPrincipalName", "mail", "jobTitle")


def _host(url: str) -> str:
    return (urlsplit(url or "").hostname or "").lower()


def authority_url(config) -> str:
    return config.get("OIDC_AUTHORITY") or config.get("AUTHORITY") or app_config.b2c_authority(config)


def is_entra(config) -> bool:
    """Microsoft Entra ID in any of its shapes: AUTHORITY and the B2C settings are Entra's
    own (the local stand-in is configured through AUTHORITY too); an OIDC_AUTHORITY is Entra
    only on Entra's hosts (External ID's ciamlogin.com, for one)."""
    if not config.get("OIDC_AUTHORITY"):
        return bool(authority_url(config))
    host = _host(config["OIDC_AUTHORITY"])
    return host in ENTRA_HOSTS or host.endswith(ENTRA_HOST_SUFFIXES)


def provider_name(config) -> str:
    if config.get("PROVIDER_NAME"):
        return config["PROVIDER_NAME"]
    if config.get("B2C_TENANT_NAME") and not (config.get("AUTHORITY") or config.get("OIDC_AUTHORITY")):
        return "Azure AD B2C"
    return ENTRA_NAME if is_entra(config) else (_host(authority_url(config)) or "the identity provider")


def api_name(config) -> str:
    endpoint = config.get("ENDPOINT") or ""
    host, path = _host(endpoint), urlsplit(endpoint).path
    # The local stand-in's Graph: on this machine, Graph's paths, next to an Entra authority.
    stand_in_graph = is_entra(config) and app_config.is_loopback_url(endpoint) and path.startswith(("/v1.0/", "/beta/"))
    if host in GRAPH_HOSTS or stand_in_graph:
        return GRAPH_NAME
    return "the API"


def sign_in_prompt(config, discovery) -> str | None:
    """`select_account` where the provider supports it, else no prompt at all. `discovery`:
    a callable that returns the provider's discovery document (called only when needed)."""
    if is_entra(config):
        return "select_account"
    supported = (discovery() or {}).get("prompt_values_supported")
    return "select_account" if isinstance(supported, list) and "select_account" in supported else None


def supports_prompt(config, prompt: str, discovery) -> bool:
    """Whether to send a `prompt` the user asked for (/login?prompt=...): `consent` always
    (the consent link needs it), the rest where Entra ID or the provider's discovery says so."""
    if prompt == "consent" or is_entra(config):
        return True
    supported = (discovery() or {}).get("prompt_values_supported")
    return isinstance(supported, list) and prompt in supported


def user_display_name(user: dict | None) -> str:
    """The best claim there is for a person's name: never "None"."""
    user = user or {}
    emails = user.get("emails")
    for value in (user.get("name"), user.get("preferred_username"), user.get("email"),
                  emails[0] if isinstance(emails, list) and emails else None, user.get("sub")):
        if isinstance(value, str) and value.strip():
            return value
    return "you"


def is_graph_profile(answer: dict) -> bool:
    return any(field in answer for field in GRAPH_PROFILE_FIELDS)
