"""``StandIn``: wires the key, the state and the three listeners together."""

import contextlib
import hashlib
import os
import ssl
import tempfile
import threading
import time

import trustme

from . import b2c as b2c_mode
from . import tokens
from .assertions import CertificateCredentials
from .front import create_front_app
from .graph import create_graph_app
from .idp import create_idp_app
from .servers import Listener
from .state import Store
from .users import USERS, find_user
from .web import origin

# Fixed demo values so `python -m local_entra` and a checked-in .env.sample
# agree across runs. They protect nothing: the stand-in only listens on loopback.
TENANT_ID = "6d470b3a-de3a-44f9-9459-b359a17ae72e"
DEFAULT_CLIENT_ID = "67993ca2-472b-43d5-9d23-445216c871fd"
DEFAULT_CLIENT_SECRET = "local-stand-in-secret-not-for-production"  # noqa: S105 - a demo value
DEFAULT_REDIRECT_URIS = ("http://localhost:5000/getAToken", "http://127.0.0.1:5000/getAToken")

# A hung IdP request is released after this long even if nobody calls
# hang_idp(False), so a forgotten hang cannot pin threads forever.
HANG_CAP_SECONDS = 120


class StandIn:
    """A local Microsoft Entra ID (v2.0) and Microsoft Graph ``/v1.0/me``.

    ``start()`` brings up three loopback listeners: ``front`` (http, the
    browser pages), ``idp`` (https: discovery, token, keys) and ``graph``
    (https: /v1.0/me), and ``settings`` then holds what an app needs to use
    them. With ``testing=True`` failures can be injected and traffic counted.

    The app registration accepts its client secret and, once certificates are registered
    (``client_certificates``, ``register_certificate``), client assertions signed with them;
    ``trusted_certificate_subjects`` (pairs of issuer CA certificate and subject, or
    ``trust_certificate_subject``) allow subject name and issuer authentication (x5c).

    With ``b2c=True`` the tenant is served as Azure AD B2C instead (see ``local_entra.b2c``):
    three user flows (``user_flows``: sign-up/sign-in, edit profile, password reset), each
    an authority of its own (``flow_authority``), tokens in B2C's shape, and ``settings``
    that hold the B2C_* keys instead of AUTHORITY.
    """

    def __init__(
        self,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
        redirect_uris=DEFAULT_REDIRECT_URIS,
        access_token_lifetime=3600,
        id_token_lifetime=3600,
        front_port=0,
        idp_port=0,
        graph_port=0,
        testing=False,
        frontchannel_logout_uris=(),
        client_certificates=(),
        trusted_certificate_subjects=(),
        b2c=False,
        b2c_tenant_name=b2c_mode.TENANT_NAME,
    ):
        self.b2c = bool(b2c)
        self.b2c_tenant_name = b2c_tenant_name
        # kind (b2c.SIGN_UP_SIGN_IN, ...) -> the user flow's name; empty outside B2C mode.
        self.user_flows = dict(b2c_mode.USER_FLOWS) if self.b2c else {}
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = list(redirect_uris)
        # The app's front-channel logout URLs (OIDC Front-Channel Logout 1.0): the
        # signed-out page loads them, with ?sid=, when a browser's session ends.
        self.frontchannel_logout_uris = list(frontchannel_logout_uris)
        self.access_token_lifetime = int(access_token_lifetime)
        self.id_token_lifetime = int(id_token_lifetime)
        self.testing = testing
        self.tenant_id = b2c_mode.TENANT_ID if self.b2c else TENANT_ID
        self.graph_audience = tokens.GRAPH_APP_ID
        self.store = Store()
        # The app registration's certificate credentials (Certificates & secrets > Certificates,
        # and the manifest's trustedCertificateSubjects): what a client assertion is checked against.
        self.certificates = CertificateCredentials(client_certificates, trusted_certificate_subjects,
                                                   record_checks=testing)
        self.key = None
        self._ca_path = None
        self._hanging = False
        self._release = threading.Event()
        self._release.set()
        self._lock = threading.Lock()
        self._front = Listener("front", create_front_app(self), front_port,
                               on_connection=lambda: self.store.count("front_connections"))
        self._idp = Listener("idp", create_idp_app(self), idp_port,
                             on_connection=lambda: self.store.count("idp_connections"))
        self._graph = Listener("graph", create_graph_app(self), graph_port,
                               on_connection=lambda: self.store.count("graph_connections"))

    # -- lifecycle -------------------------------------------------------------
    def start(self):
        with self._lock:
            if self.key is not None:
                return self
            # A new key and CA per start: nothing issued by an earlier run (or
            # another stand-in) is trusted by this one.
            self.key = tokens.SigningKey()
            tls = self._make_tls()
            self._idp.ssl_context = self._graph.ssl_context = tls
            try:
                for listener in (self._front, self._idp, self._graph):
                    listener.start()
            except BaseException:
                self._stop_locked()
                raise
        return self

    def stop(self):
        with self._lock:
            self._stop_locked()

    def _stop_locked(self):
        # Let hung requests go first, or server shutdown would wait on them.
        self._hanging = False
        self._release.set()
        for listener in (self._front, self._idp, self._graph):
            listener.stop()
        if self._ca_path:
            with contextlib.suppress(OSError):  # removed by someone else already
                os.unlink(self._ca_path)
            self._ca_path = None
        self.key = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _make_tls(self):
        ca = trustme.CA(organization_name="Local Entra stand-in")
        cert = ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        handle, self._ca_path = tempfile.mkstemp(prefix="local_entra_ca_", suffix=".pem")
        os.close(handle)
        ca.cert_pem.write_to_path(self._ca_path)
        return context

    def _require_started(self):
        if self.key is None:
            raise RuntimeError("StandIn is not running: call start() first")

    # -- addresses and settings --------------------------------------------------
    @property
    def front_url(self):
        self._require_started()
        return f"http://127.0.0.1:{self._front.port}"

    @property
    def idp_url(self):
        self._require_started()
        return f"https://127.0.0.1:{self._idp.port}"

    @property
    def graph_url(self):
        self._require_started()
        return f"https://127.0.0.1:{self._graph.port}"

    @property
    def tenant_segment(self):
        """The tenant as URLs name it: its id (Entra), or <name>.onmicrosoft.com (B2C)."""
        return f"{self.b2c_tenant_name}.onmicrosoft.com" if self.b2c else self.tenant_id

    @property
    def authority(self):
        """Entra: the tenant's authority. B2C: the sign-up/sign-in flow's."""
        if self.b2c:
            return self.flow_authority(self.user_flows[b2c_mode.SIGN_UP_SIGN_IN])
        return f"{self.idp_url}/{self.tenant_id}"

    def flow_authority(self, flow):
        """B2C: a user flow's authority, https://127.0.0.1:<idp port>/<tenant>.onmicrosoft.com/<flow>."""
        return f"{self.idp_url}/{self.tenant_segment}/{flow}"

    @property
    def issuer(self):
        # B2C: one issuer for every flow of the tenant, named by its id, with B2C's trailing slash.
        return f"{self.idp_url}/{self.tenant_id}/v2.0/" if self.b2c else f"{self.authority}/v2.0"

    @property
    def authorization_endpoint(self):
        if self.b2c:
            return self.openid_configuration()["authorization_endpoint"]
        return f"{self.front_url}/{self.tenant_id}/oauth2/v2.0/authorize"

    @property
    def token_endpoint(self):
        """Where tokens are requested: also the audience every client assertion must name
        (B2C: the sign-up/sign-in flow's; ``token_endpoint_of`` names the others')."""
        return self.token_endpoint_of(None)

    def token_endpoint_of(self, flow):
        if self.b2c:
            return self.openid_configuration(flow)["token_endpoint"]
        return f"{self.authority}/oauth2/v2.0/token"

    @property
    def settings(self):
        """What an app needs: its registration, the authority (B2C: the tenant, its domain
        and its user flows), Graph and the CA to trust."""
        if self.b2c:
            where = {
                "B2C_TENANT_NAME": self.b2c_tenant_name,
                **{b2c_mode.FLOW_SETTINGS[kind]: name for kind, name in self.user_flows.items()},
                # host:port: the app then builds https://127.0.0.1:<port>/<tenant>.onmicrosoft.com/<flow>.
                "B2C_DOMAIN": self.idp_url.removeprefix("https://"),
            }
        else:
            where = {"AUTHORITY": self.authority}
        return {
            **where,
            "CLIENT_ID": self.client_id,
            "CLIENT_SECRET": self.client_secret,
            "ENDPOINT": f"{self.graph_url}/v1.0/me",
            "REQUESTS_CA_BUNDLE": self._ca_path,
            "SCOPE": "User.Read",
        }

    def user_flow(self, name):
        """B2C: the canonical name of a user flow named in a URL (B2C reads them without
        regard to case), or None for one the tenant does not have."""
        return next((flow for flow in self.user_flows.values() if flow.lower() == (name or "").lower()), None)

    def user_flow_kind(self, flow):
        return next((kind for kind, name in self.user_flows.items() if name == flow), None)

    def openid_configuration(self, flow=None):
        """The discovery document: the tenant's (Entra), or a user flow's (B2C; default
        the sign-up/sign-in flow)."""
        if self.b2c:
            return b2c_mode.openid_configuration(self, flow or self.user_flows[b2c_mode.SIGN_UP_SIGN_IN])
        base = f"{self.idp_url}/{self.tenant_id}"
        front = f"{self.front_url}/{self.tenant_id}"
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{front}/oauth2/v2.0/authorize",
            "token_endpoint": self.token_endpoint,
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "end_session_endpoint": f"{front}/oauth2/v2.0/logout",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": [
                "sub", "iss", "aud", "exp", "iat", "nbf", "nonce", "name",
                "preferred_username", "oid", "tid", "ver",
            ],
            "tenant_region_scope": "local",
        }

    def is_tenant(self, tenant):
        # B2C takes the tenant's name (<name>.onmicrosoft.com) or its id in its URLs.
        return tenant.lower() in {self.tenant_id, self.tenant_segment.lower()}

    # -- the directory -------------------------------------------------------------------
    def find_user(self, key):
        """The user whose id or userPrincipalName is ``key``, as this stand-in knows them now
        (a name changed in B2C's edit-profile flow included), or None. A copy."""
        user = find_user(key)
        if user is None:
            return None
        return {**user, "displayName": self.store.display_name(user["id"]) or user["displayName"]}

    def users(self):
        return [self.find_user(user["id"]) for user in USERS]

    def registered_origins(self):
        return {origin(uri) for uri in self.redirect_uris}

    def register_redirect_uri(self, uri):
        if uri not in self.redirect_uris:
            self.redirect_uris.append(uri)

    # -- certificate credentials -------------------------------------------------------
    def register_certificate(self, pem_or_cert):
        """Upload a certificate to the app registration: client assertions signed with its key
        and naming it by thumbprint (x5t, x5t#S256) are accepted. Takes PEM (text or bytes; a
        file with a key and a chain names its certificate first) or an ``x509.Certificate``.
        Returns its SHA-1 thumbprint (upper-case hex, as the portal shows it)."""
        return self.certificates.register(pem_or_cert)

    def unregister_certificate(self, thumbprint):
        self.certificates.unregister(thumbprint)

    def trust_certificate_subject(self, issuer, subject):
        """Subject name and issuer authentication: accept assertions that carry their certificate
        (x5c) when it has this subject (``CN=...``) and chains to ``issuer`` (a CA certificate)."""
        self.certificates.trust_subject(issuer, subject)

    @property
    def client_assertion_checks(self):
        """Each client assertion checked: ``found_by`` (x5t, x5t#S256 or x5c), ``thumbprint``,
        ``alg``, ``x5c`` (certificates sent) and ``outcome`` ("ok" or the AADSTS code)."""
        self._require_testing()
        return self.certificates.checks

    def register_frontchannel_logout_uri(self, uri):
        if uri not in self.frontchannel_logout_uris:
            self.frontchannel_logout_uris.append(uri)

    def pairwise_sub(self, user, audience):
        """A stable subject per (user, audience): Entra's ``sub`` is pairwise too,
        which stops apps from (wrongly) using it as a cross-app user id."""
        digest = hashlib.sha256(f"{self.tenant_id}|{audience}|{user['id']}".encode()).digest()
        return tokens.b64url(digest)[:43]

    # -- testing controls ------------------------------------------------------
    def _require_testing(self):
        if not self.testing:
            raise RuntimeError("failure injection needs StandIn(testing=True)")

    def fail_next_token(self, error="invalid_grant", description=None, status=400, count=1):
        """The next ``count`` token requests (any grant) answer this OAuth error."""
        self._require_testing()
        description = description or (
            "AADSTS50076: Due to a configuration change made by your administrator, or because"
            " you moved to a new location, you must use multi-factor authentication."
        )
        self.store.set_token_fault(count, error=error, description=description, status=int(status))

    def graph_fault(self, status=503, body=None, headers=None, delay=0.0, count=1):
        """The next ``count`` Graph calls (None: until cleared) wait ``delay`` seconds,
        then answer ``status`` with ``body``/``headers`` (a Graph error body by
        default); ``status=None`` answers normally after the delay."""
        self._require_testing()
        self.store.set_graph_fault(
            count, status=None if status is None else int(status), body=body,
            headers=dict(headers or {}), delay=float(delay or 0),
        )

    def clear_faults(self):
        self._require_testing()
        self.store.clear_faults()

    def revoke_refresh_tokens(self, username=None):
        """Revoke every refresh token, or those of one user (UPN or object id)."""
        self._require_testing()
        user_id = None
        if username is not None:
            user = find_user(username)
            if user is None:
                raise ValueError(f"unknown user {username!r}")
            user_id = user["id"]
        self.store.revoke_refresh_tokens(user_id)

    def stop_idp(self):
        """Close the https IdP listener (new connections are refused) and drop its connections."""
        self._require_testing()
        self._idp.stop()

    def start_idp(self):
        """Listen again on the same port as before."""
        self._require_testing()
        self._require_started()
        self._idp.start()

    def hang_idp(self, hang=True):
        """While on, IdP requests are accepted and read but not answered."""
        self._require_testing()
        self._hanging = bool(hang)
        if hang:
            self._release.clear()
        else:
            self._release.set()

    def wait_while_idp_hangs(self):
        if self._hanging:
            self._release.wait(HANG_CAP_SECONDS)

    @property
    def counters(self):
        """A snapshot (a new dict each time) of the request and connection counters."""
        self._require_testing()
        return self.store.counters()

    def reset_counters(self):
        """Zero the counters and forget the recorded requests."""
        self._require_testing()
        self.store.reset_counters()
        self.store.clear_records()
        self.certificates.clear_checks()

    # -- recorded requests: what the app actually sent -------------------------------
    def record_request(self, kind, **params):
        """Remember one request's parameters ("authorize", "token" or "logout"); testing mode only."""
        if self.testing:
            self.store.record(kind, params)

    @property
    def recorded_requests(self):
        """A snapshot: {"authorize": [...], "token": [...], "logout": [...]}, oldest first."""
        self._require_testing()
        return self.store.records()

    @property
    def authorize_requests(self):
        """Each authorize request's ``client_id``, ``prompt``, ``login_hint`` and raw ``claims``."""
        return self.recorded_requests["authorize"]

    @property
    def token_requests(self):
        """Each token request's ``grant_type``, raw ``claims``, ``client_assertion_type`` and
        ``client_secret_sent`` (in the form or as Basic credentials)."""
        return self.recorded_requests["token"]

    @property
    def logout_requests(self):
        """Each end-session request's ``method``, ``post_logout_redirect_uri``, ``client_id``, ``logout_hint``."""
        return self.recorded_requests["logout"]

    # -- Conditional Access ------------------------------------------------------------
    def cae_revoke(self, at=None):
        """A CAE event (say, the user moved to a new location) at ``at`` (epoch seconds, default now).

        From then on Graph challenges every CAE-capable (cp1) access token that
        was not issued in answer to this event's claims challenge. Returns the instant.
        """
        self._require_testing()
        instant = int(time.time()) if at is None else int(at)
        self.store.set_cae_revoked_at(instant)
        return instant

    def cae_clear(self):
        self._require_testing()
        self.store.set_cae_revoked_at(None)

    def require_step_up(self, error="interaction_required"):
        """A Conditional Access policy now requires MFA: refresh tokens from sign-ins that
        did not claim the policy (``claims.STEP_UP_POLICY_ID`` in ``capolids``) are refused
        with ``error`` (Entra has answered both interaction_required and invalid_grant)."""
        self._require_testing()
        self.store.set_step_up_error(error)

    def mint_access_token(self, username, scopes="User.Read", lifetime=None, **claims):
        """A Graph access token made without a sign-in, for tests (e.g. an expired
        one: ``lifetime=-60``); ``claims`` override or add claims."""
        self._require_testing()
        self._require_started()
        user = find_user(username)
        if user is None:
            raise ValueError(f"unknown user {username!r}")
        now = int(time.time())
        lifetime = self.access_token_lifetime if lifetime is None else lifetime
        payload = {
            "aud": self.graph_audience, "iss": self.issuer, "iat": now, "nbf": min(now, now + lifetime),
            "exp": now + lifetime, "appid": self.client_id, "azp": self.client_id,
            "oid": user["id"], "tid": self.tenant_id, "name": user["displayName"],
            "preferred_username": user["userPrincipalName"], "upn": user["userPrincipalName"],
            "scp": scopes, "sub": self.pairwise_sub(user, self.graph_audience), "ver": "2.0",
        }
        payload.update(claims)
        return self.key.sign(payload)
