"""What every authorize endpoint shares: checking the request, and answering the app.

Entra ID's one authorize endpoint (``front``) and Azure AD B2C's, one per user flow
(``b2c_pages``), accept the same requests and answer the same way; only what the person
sees in between differs.
"""

import uuid
from urllib.parse import urlencode, urlsplit

from flask import make_response, redirect, render_template, url_for

from . import sso


def validate(standin, args, error_page):
    """The authorize request's parameters, checked as Entra checks them: (validated, None),
    or (None, a response) that refuses it.

    An unknown app or reply URL gets an error page, never a redirect (that would be the
    open redirect Entra's check exists to prevent); anything else wrong goes back to the
    app as ``invalid_request``.
    """
    client_id = args.get("client_id")
    if not client_id:
        return None, error_page("AADSTS900144: The request body must contain the following"
                                " parameter: 'client_id'.")
    if client_id != standin.client_id:
        return None, error_page(f"AADSTS700016: Application with identifier '{client_id}' was not"
                                f" found in the directory '{standin.tenant_id}'.")
    redirect_uri = args.get("redirect_uri")
    if redirect_uri not in standin.redirect_uris:
        return None, error_page(f"AADSTS50011: The redirect URI '{redirect_uri or ''}' specified in"
                                f" the request does not match the redirect URIs configured for the"
                                f" application '{client_id}'.")
    state = args.get("state")
    response_mode = args.get("response_mode", "query")
    if response_mode not in ("query", "form_post"):
        response_mode = "query"

    def fail(description):
        return None, back_to_client(redirect_uri, response_mode, {
            "error": "invalid_request", "error_description": description, "state": state,
        })

    if args.get("response_type") != "code":
        return fail(f"AADSTS700054: response_type '{args.get('response_type', '')}' is not"
                    " enabled for the application; only 'code' is supported.")
    scopes = args.get("scope", "").split()
    if "openid" not in scopes:
        return fail("AADSTS900144: The 'scope' parameter must include 'openid'.")
    if not args.get("code_challenge"):
        return fail("AADSTS9002325: Proof Key for Code Exchange is required: send a code_challenge.")
    if args.get("code_challenge_method") != "S256":
        return fail("AADSTS501491: Invalid code_challenge_method: only 'S256' is accepted.")
    return {
        "redirect_uri": redirect_uri,
        "response_mode": response_mode,
        "state": state,
        "scopes": scopes,
        "nonce": args.get("nonce"),
        "code_challenge": args["code_challenge"],
        "client_id": client_id,
        "claims": args.get("claims"),
    }, None


def picker_page(standin, validated, action_endpoint, forgot_endpoint=None, **url_values):
    """The account picker for a checked request. The request stays on the server; the form
    carries only its id, so the browser cannot alter the client, reply URL or challenge.
    `forgot_endpoint`: B2C's "Forgot your password?" link, for that same request."""
    request_id = standin.store.add_pending(validated)
    _, session = sso.current(standin)
    return render_template(
        "picker.html",
        title="Pick an account",
        users=standin.users(),
        signed_in_id=session and session["user_id"],
        request_id=request_id,
        client_id=validated["client_id"],
        action=url_for(action_endpoint, **url_values),
        forgot_url=forgot_endpoint and url_for(forgot_endpoint, request_id=request_id, **url_values),
    )


def complete_sign_in(standin, pending, user):
    """Send ``user`` back to the app with a code, from this browser's session as them."""
    cookie, session = sso.session_for(standin, user)
    code = standin.store.add_code({
        "client_id": pending["client_id"],
        "redirect_uri": pending["redirect_uri"],
        "code_challenge": pending["code_challenge"],
        "nonce": pending["nonce"],
        "scopes": pending["scopes"],
        "claims": pending["claims"],
        "user_id": user["id"],
        "sid": session["sid"],
        # Azure AD B2C: the user flow that issued the code; only its token endpoint redeems it.
        "flow": pending.get("flow"),
    })
    # Front-channel logout later tells the apps that got codes from this session.
    standin.store.note_sign_in(cookie, pending["redirect_uri"])
    answer = {"code": code, "state": pending["state"], "session_state": str(uuid.uuid4())}
    response = make_response(back_to_client(pending["redirect_uri"], pending["response_mode"], answer))
    sso.remember(response, cookie)
    return response


def back_to_client(redirect_uri, response_mode, params):
    params = {k: v for k, v in params.items() if v is not None}
    if response_mode == "form_post":
        # No script allowed, so the user presses the button that an auto-submit
        # script would otherwise press.
        return render_template(
            "form_post.html", title="Continue to the application",
            redirect_uri=redirect_uri, params=params,
        )
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return redirect(redirect_uri + separator + urlencode(params), code=302)
