"""The console's session: the admin token, typed once on the login page, kept in an HttpOnly,
SameSite=Strict cookie (Secure over https); never in a URL.

CSRF: every state-changing console request carries `csrf` (a form field or the X-CSRF-Token
header) equal to HMAC-SHA256(admin token, "tollgate-console-csrf"). A cross-site page can neither
read the cookie nor compute the HMAC without the token; SameSite=Strict is the second wall.
"""
from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "tollgate_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
MAX_AGE_S = 12 * 3600  # a working day; the operator logs in again the next morning


def matches(given: str | None, token: str) -> bool:
    # compare_digest: the time taken says nothing about how much of the token matched
    return bool(token) and given is not None and hmac.compare_digest(given.encode(), token.encode())


def signed_in(request: Request, token: str) -> bool:
    return matches(request.cookies.get(COOKIE), token)


def csrf_token(token: str) -> str:
    return hmac.new(token.encode(), b"tollgate-console-csrf", hashlib.sha256).hexdigest()


async def csrf_ok(request: Request, token: str) -> bool:
    """The request's CSRF token (header, else form field) is the one of the session's cookie."""
    cookie = request.cookies.get(COOKIE)
    if not matches(cookie, token):
        return False
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        given = (await form(request)).get(CSRF_FIELD)
    return given is not None and hmac.compare_digest(given.encode(), csrf_token(cookie).encode())


MAX_FORM = 1 << 20  # a draft plan fits; the admin API's own body bound


async def form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (the console's forms), first value per name;
    read once and kept on the request. Anything else, or over MAX_FORM, is an empty form."""
    if "console_form" not in request.state._state:
        fields: dict[str, str] = {}
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/x-www-form-urlencoded":
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_FORM:
                    body = b""
                    break
            try:
                parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=100)
            except (UnicodeDecodeError, ValueError):
                parsed = {}
            fields = {k: v[0] for k, v in parsed.items()}
        request.state.console_form = fields
    return request.state.console_form


def set_session(response: Response, request: Request, token: str) -> None:
    response.set_cookie(COOKIE, token, max_age=MAX_AGE_S, path="/console", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
