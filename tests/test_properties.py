"""Property-based: whatever the query string says, no 5xx, nobody signed in, no off-site redirect."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessions import SIGNED_IN_KEY

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80)
url_like = st.one_of(
    texts,
    st.sampled_from(["//evil.example", "https://evil.example/x", "/\\evil.example", "\\/evil.example",
                     "javascript:alert(1)", "/%2F%2Fevil.example", "/\r\nSet-Cookie:x=y", "http:/evil.example",
                     "/call_downstream_api", "/", "///evil.example", "/.//evil.example", "https:evil.example"]),
    st.builds(lambda a, b: a + b, st.sampled_from(["/", "//", "http://", "\\\\", "/\t/"]), texts),
)
callback_params = st.dictionaries(
    keys=st.one_of(st.sampled_from(["code", "state", "error", "error_description", "session_state",
                                    "client_info", "id_token", "nonce", "admin_consent"]), texts),
    values=texts, max_size=6)


def is_same_origin(location: str) -> bool:
    target = urlsplit(urljoin("http://localhost/", location))
    return (target.scheme, target.netloc) == ("http", "localhost")


def session_has_a_user(client) -> bool:
    with client.session_transaction() as session:
        return SIGNED_IN_KEY in session


@FUZZ
@given(params=callback_params, use_real_state=st.booleans())
def test_random_callback_query_never_errors_never_signs_in(client, auth, params, use_real_state):
    real = auth.start()
    if use_real_state:
        # The real state with anything but a code: an error answer at most, never a sign-in.
        params = {k: v for k, v in params.items() if k != "code"} | {"state": real["state"]}
    response = client.get("/getAToken", query_string=params)
    assert response.status_code < 500
    assert not session_has_a_user(client)
    if "Location" in response.headers:
        assert is_same_origin(response.headers["Location"])


@FUZZ
@given(next_value=url_like)
def test_random_next_never_errors_and_never_leaves_the_site(client, auth, next_value):
    login = client.get("/login", query_string={"next": next_value})
    assert login.status_code == 302
    params = auth.start(next_path=next_value) if next_value else auth.start()
    done = auth.callback(code="c", state=params["state"])
    assert done.status_code == 302
    assert is_same_origin(done.headers["Location"])
    assert done.headers["Location"].startswith("/") and not done.headers["Location"].startswith("//")
