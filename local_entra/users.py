"""The directory of the stand-in: a few fictional people with Graph-shaped profiles.

The keys and their order follow what Microsoft Graph returns for ``GET /v1.0/me``
with no ``$select``, so an app that renders these renders real profiles too.
The domain is ``contoso.example`` (reserved by RFC 2606) so no address is real.
"""

# Fixed GUIDs keep ids stable across runs: session files, screenshots and
# test expectations written against one run stay valid for the next.
USERS = [
    {
        "businessPhones": ["+1 425 555 0141"],
        "displayName": "Priya Raman",
        "givenName": "Priya",
        "jobTitle": "Product Manager",
        "mail": "priya.raman@contoso.example",
        "mobilePhone": "+1 425 555 0199",
        "officeLocation": "Building 4, Room 2107",
        "preferredLanguage": "en-US",
        "surname": "Raman",
        "userPrincipalName": "priya.raman@contoso.example",
        "id": "97a1916d-7b77-4296-b01b-d64ba4a3d768",
    },
    {
        "businessPhones": ["+34 91 555 0123"],
        "displayName": "Tomás Herrera",
        "givenName": "Tomás",
        "jobTitle": "Site Reliability Engineer",
        "mail": "tomas.herrera@contoso.example",
        "mobilePhone": None,
        "officeLocation": "Madrid, Floor 3",
        "preferredLanguage": "es-ES",
        "surname": "Herrera",
        "userPrincipalName": "tomas.herrera@contoso.example",
        "id": "45f2bf80-7f7b-4ac9-b254-24280eef83ad",
    },
    {
        # Graph returns an empty list and nulls for unset fields; one such
        # user keeps apps honest about rendering missing data.
        "businessPhones": [],
        "displayName": "Ingrid Solberg",
        "givenName": "Ingrid",
        "jobTitle": "Finance Analyst",
        "mail": "ingrid.solberg@contoso.example",
        "mobilePhone": "+47 915 55 012",
        "officeLocation": None,
        "preferredLanguage": "nb-NO",
        "surname": "Solberg",
        "userPrincipalName": "ingrid.solberg@contoso.example",
        "id": "06caa576-5b0e-4940-bc7a-63e0db0e6122",
    },
]


def find_user(key):
    """Return the user whose id or userPrincipalName is ``key`` (case-insensitive), or None."""
    if not key:
        return None
    key = key.lower()
    for user in USERS:
        if key in (user["id"], user["userPrincipalName"].lower()):
            return user
    return None
