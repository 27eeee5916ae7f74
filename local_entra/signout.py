"""Signing out at the stand-in: the end-session endpoint and front-channel logout.

As at Entra ID, ending the browser's session needs no account question when
the app names the user with ``logout_hint`` (the ``login_hint`` claim it got);
otherwise the person is asked which account to sign out of. When a session
ends, whoever asked for it (this app, another app, or the stand-in's own
page), the signed-out page loads each signed-in app's front-channel logout
URL in a hidden iframe, with ``?sid=`` alone, as Entra does.

Azure AD B2C has an end-session endpoint per user flow and asks nothing: it ends the
browser's session and sends it straight back (through the signed-out page only when apps
must be told through front-channel logout, which needs the page's iframes).
"""

from urllib.parse import urlencode, urlsplit

from flask import make_response, redirect, render_template, request, url_for

from . import b2c, sso
from .web import content_security_policy, origin


def add_sign_out_routes(app, standin, error_page):
    @app.get("/")
    def home():
        """The stand-in's own page: who is signed in here, and "Sign out everywhere",
        which ends the session the way another app's sign-out would."""
        _, session = sso.current(standin)
        return render_template(
            "home.html",
            title=f"Local {'Azure AD B2C' if standin.b2c else 'Entra ID'} stand-in",
            user=session and standin.find_user(session["user_id"]),
            account=session and sso.login_hint(session["user_id"], standin.tenant_id),
            action=url_for("logout", tenant=standin.tenant_segment,
                           # B2C: the sign-up/sign-in flow's, spelt as its discovery document does.
                           **({"flow": standin.user_flows[b2c.SIGN_UP_SIGN_IN].lower()} if standin.b2c else {})),
        )

    def logout(tenant, flow=None):
        standin.store.count("logout")
        args = request.args
        standin.record_request("logout", method=request.method, client_id=args.get("client_id"),
                               post_logout_redirect_uri=args.get("post_logout_redirect_uri"),
                               logout_hint=args.get("logout_hint"))
        if not standin.is_tenant(tenant):
            return error_page(f"AADSTS90002: Tenant '{tenant}' not found.")
        if standin.b2c and standin.user_flow(flow) is None:
            return error_page(f"The user flow '{flow}' was not found in tenant '{standin.b2c_tenant_name}'.", 404)
        back = _way_back(standin, args.get("post_logout_redirect_uri"))
        cookie, session = sso.current(standin)
        if session is None:  # nobody to sign out: say so and offer the way back
            return _signed_out_page(back)
        if standin.b2c:
            ended = standin.store.end_browser_session(cookie)
            frontchannel_urls = _frontchannel_logout_urls(standin, ended) if ended else []
            if back and not frontchannel_urls:
                response = redirect(back, code=302)
                sso.forget(response)
                return response
            return _signed_out_page(back, frontchannel_urls)
        account = sso.login_hint(session["user_id"], standin.tenant_id)
        # The hint comes from the app (GET) or from the person's choice on the account question (POST).
        chosen = request.form.get("account") if request.method == "POST" else args.get("logout_hint")
        if chosen != account:
            return render_template(
                "which_account.html",
                title="Which account do you want to sign out of?",
                user=standin.find_user(session["user_id"]),
                account=account,
                action=request.full_path,  # the same endpoint, its parameters kept
            )
        ended = standin.store.end_browser_session(cookie)
        return _signed_out_page(back, _frontchannel_logout_urls(standin, ended) if ended else [])

    rule = "/<tenant>/<flow>/oauth2/v2.0/logout" if standin.b2c else "/<tenant>/oauth2/v2.0/logout"
    app.add_url_rule(rule, "logout", logout, methods=["GET", "POST"])


def _way_back(standin, target):
    """``post_logout_redirect_uri`` if the app registered its origin, else None:
    otherwise this page would be a link-laundering service for anyone."""
    return target if target and origin(target) in standin.registered_origins() else None


def _signed_out_page(back, frontchannel_urls=()):
    response = make_response(render_template(
        "signed_out.html", title="You signed out of your account", back=back,
        frontchannel_urls=frontchannel_urls,
    ))
    # Frames are allowed from exactly the apps being told, nothing else.
    response.headers["Content-Security-Policy"] = content_security_policy(frontchannel_urls)
    sso.forget(response)
    return response


def _frontchannel_logout_urls(standin, session):
    """The front-channel logout URLs of the apps signed in with ``session``, each with ``?sid=``.

    There is one client id, so every registered URL is that app's; of those, the
    ones on an origin the browser used to sign in are meant (``make run`` registers
    a localhost and a 127.0.0.1 form of the same URL), else all of them.
    """
    used = {origin(uri) for uri in session["redirect_uris"]}
    registered = standin.frontchannel_logout_uris
    chosen = [uri for uri in registered if origin(uri) in used] or registered
    return [_with_query(uri, sid=session["sid"]) for uri in chosen]


def _with_query(uri, **params):
    separator = "&" if urlsplit(uri).query else "?"
    return uri + separator + urlencode(params)
