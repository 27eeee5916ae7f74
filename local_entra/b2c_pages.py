"""Azure AD B2C's user-flow pages: what the person sees at each flow's authorize endpoint.

* Sign-up/sign-in: the account picker, with B2C's "Forgot your password?" link, which ends
  the flow the way B2C's does (``access_denied``, AADB2C90118) so that the app starts its
  password-reset flow. A browser already signed in here is signed in again at once (B2C's
  single sign-on) unless the app asks for ``prompt=login``.
* Edit profile: a form with the signed-in user's display name; a new name holds for the
  stand-in's lifetime (id tokens, Graph). Cancel ends the flow with AADB2C90091. A browser
  not signed in here picks an account first.
* Password reset: pick the account, type a new password twice (accepted, never stored);
  the flow then ends like a sign-in, with a code for that account.

Every form carries only the id of the request checked at the authorize endpoint, bound to
its flow: the browser can change neither the app, nor the reply URL, nor whose profile it
edits.
"""

from flask import make_response, render_template, request, url_for

from . import authorize, sso
from .b2c import CANCELLED, EDIT_PROFILE, FORGOTTEN, RESET_PASSWORD, SIGN_UP_SIGN_IN

EXPIRED_REQUEST = "This request has expired or was already used. Go back to the application and try again."
SESSION_ENDED = "Your sign-in session here has ended. Go back to the application and try again."
UNKNOWN_USER = "The user account does not exist in this directory."
# What B2C's own pages say.
PASSWORDS_DIFFER = ("The password entry fields do not match. Please enter the same password in both fields"
                    " and try again.")
MAX_DISPLAY_NAME = 256  # Graph's limit for displayName


def add_user_flow_pages(app, standin, error_page):
    def user_flow_or_error(tenant, flow):
        if not standin.is_tenant(tenant):
            return None, error_page(f"The tenant '{tenant}' was not found.", 404)
        canonical = standin.user_flow(flow)
        if canonical is None:
            return None, error_page(f"The user flow '{flow}' was not found in tenant"
                                    f" '{standin.b2c_tenant_name}'.", 404)
        return canonical, None

    def take_pending(flow):
        """The checked request a form names, if it was made for this flow (single use)."""
        pending = standin.store.pop_pending(request.form.get("request_id") or request.args.get("request_id"))
        return pending if pending is not None and pending.get("flow") == flow else None

    def flow_and_pending(tenant, flow):
        """For a page posted back: (the flow, its checked request), or (None, the answer):
        the error page, or for Cancel the end of the flow as B2C ends it (AADB2C90091)."""
        flow, refused = user_flow_or_error(tenant, flow)
        if refused is not None:
            return None, refused
        pending = take_pending(flow)
        if pending is None:
            return None, error_page(EXPIRED_REQUEST)
        if "cancel" in request.form:
            return None, end_with_error(pending, CANCELLED)
        return flow, pending

    def end_with_error(pending, description):
        return authorize.back_to_client(pending["redirect_uri"], pending["response_mode"], {
            "error": "access_denied", "error_description": description, "state": pending["state"],
        })

    def picker(tenant, flow, validated):
        offers_reset = standin.user_flow_kind(flow) == SIGN_UP_SIGN_IN
        return authorize.picker_page(standin, validated, "user_flow_pick",
                                     "forgot_password" if offers_reset else None, tenant=tenant, flow=flow)

    def edit_profile_page(tenant, flow, validated, user, problem=None, status=200):
        request_id = standin.store.add_pending({**validated, "user_id": user["id"]})
        return render_template(
            "edit_profile.html", title="Edit your profile", user=user, request_id=request_id, problem=problem,
            display_name=request.form.get("displayName", user["displayName"]) if problem else user["displayName"],
            action=url_for("edit_profile", tenant=tenant, flow=flow),
        ), status

    def reset_page(tenant, flow, validated, chosen_id=None, problem=None, status=200):
        request_id = standin.store.add_pending(validated)
        return render_template(
            "reset_password.html", title="Reset your password", users=standin.users(), chosen_id=chosen_id,
            request_id=request_id, problem=problem, action=url_for("reset_password", tenant=tenant, flow=flow),
        ), status

    @app.get("/<tenant>/<flow>/oauth2/v2.0/authorize")
    def user_flow_authorize(tenant, flow):
        standin.store.count("authorize")
        args = request.args
        standin.record_request("authorize", client_id=args.get("client_id"), prompt=args.get("prompt"),
                               login_hint=args.get("login_hint"), claims=args.get("claims"))
        flow, refused = user_flow_or_error(tenant, flow)
        if refused is not None:
            return refused
        validated, refused = authorize.validate(standin, args, error_page)
        if refused is not None:
            return refused
        validated["flow"] = flow
        kind = standin.user_flow_kind(flow)
        _, session = sso.current(standin)
        hinted = sso.user_for_hint(args.get("login_hint"), standin.tenant_id)
        if kind == RESET_PASSWORD:
            return reset_page(tenant, flow, validated, chosen_id=hinted and hinted["id"])
        if kind == EDIT_PROFILE:
            if session is None:
                return picker(tenant, flow, validated)
            return edit_profile_page(tenant, flow, validated, standin.find_user(session["user_id"]))
        # B2C honours prompt=login alone; select_account and the rest change nothing there.
        if "login" not in args.get("prompt", "").split():
            known = standin.find_user(session["user_id"]) if session else hinted
            if known is not None:
                return authorize.complete_sign_in(standin, validated, known)
        return picker(tenant, flow, validated)

    @app.post("/<tenant>/<flow>/oauth2/v2.0/authorize")
    def user_flow_pick(tenant, flow):
        flow, pending = flow_and_pending(tenant, flow)
        if flow is None:
            return pending  # the error page, or Cancel's answer
        user = standin.find_user(request.form.get("user_id"))
        if user is None:
            return error_page(UNKNOWN_USER)
        if standin.user_flow_kind(flow) != EDIT_PROFILE:
            return authorize.complete_sign_in(standin, pending, user)
        # Signed in here now; the profile to edit is theirs.
        cookie, _ = sso.session_for(standin, user)
        response = make_response(edit_profile_page(tenant, flow, pending, user))
        sso.remember(response, cookie)
        return response

    @app.get("/<tenant>/<flow>/forgot-password")
    def forgot_password(tenant, flow):
        flow, pending = flow_and_pending(tenant, flow)
        if flow is None:
            return pending  # the error page
        return end_with_error(pending, FORGOTTEN)

    @app.post("/<tenant>/<flow>/profile")
    def edit_profile(tenant, flow):
        flow, pending = flow_and_pending(tenant, flow)
        if flow is None:
            return pending  # the error page, or Cancel's answer
        if "user_id" not in pending:
            return error_page(EXPIRED_REQUEST)
        _, session = sso.current(standin)
        # Only from the browser signed in as that user: a form posted from anywhere else
        # (no cookie: SameSite=Lax) or after signing out changes nobody's name.
        if session is None or session["user_id"] != pending["user_id"]:
            return error_page(SESSION_ENDED)
        user = standin.find_user(pending["user_id"])
        name = " ".join(request.form.get("displayName", "").split())
        if not name:
            return edit_profile_page(tenant, flow, pending, user, "Enter a display name.", 400)
        if len(name) > MAX_DISPLAY_NAME:
            return edit_profile_page(tenant, flow, pending, user,
                                     f"A display name has at most {MAX_DISPLAY_NAME} characters.", 400)
        standin.store.set_display_name(user["id"], name)
        return authorize.complete_sign_in(standin, pending, standin.find_user(user["id"]))

    @app.post("/<tenant>/<flow>/password")
    def reset_password(tenant, flow):
        flow, pending = flow_and_pending(tenant, flow)
        if flow is None:
            return pending  # the error page, or Cancel's answer
        user = standin.find_user(request.form.get("user_id"))
        new, again = request.form.get("new_password", ""), request.form.get("confirm_password", "")
        problem = ("Choose your account." if user is None else "Enter a new password." if not new
                   else PASSWORDS_DIFFER if new != again else None)
        if problem:
            return reset_page(tenant, flow, pending, chosen_id=user and user["id"], problem=problem, status=400)
        # Nothing to store: the stand-in checks no password. Like B2C, the reset ends signed in.
        return authorize.complete_sign_in(standin, pending, user)
