"""A minimal client for NocoDB's REST API, for `facusync nocodb-setup`.

Standard library only (urllib), so the setup runs wherever facusync is installed without a
new dependency. Every message it raises names the call and is scrubbed of the secrets it knows.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

from facusync.errors import EX_NOPERM, EX_UNAVAILABLE


class SetupFailure(Exception):
    """Stops nocodb-setup with an exit status and one sentence for the admin."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class NocoDB:
    """One signed-in connection to NocoDB's API."""

    def __init__(self, url: str, secrets: Iterable[str], timeout: float = 30.0) -> None:
        self.url = url
        self.secrets = [s for s in secrets if s]
        self.timeout = timeout
        self.headers: dict[str, str] = {}
        self.session = False  # an xc-auth session (meta-diff needs one), not an API token

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def call(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers.update(self.headers)
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = self.scrub(error_text(exc.read()))
            if exc.code in (401, 403):
                raise SetupFailure(EX_NOPERM, f"NocoDB refused {method} {path} ({exc.code}): "
                                              f"{detail}; use a super admin's token or sign-in") from None
            raise SetupFailure(EX_UNAVAILABLE, f"NocoDB answered {exc.code} to {method} {path}: "
                                               f"{detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SetupFailure(EX_UNAVAILABLE, f"cannot reach NocoDB at {self.url}: "
                                               f"{self.scrub(str(reason))}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise SetupFailure(EX_UNAVAILABLE, f"{self.url}{path} did not answer JSON: is --url "
                                               "NocoDB's address?") from None

    def listed(self, path: str) -> list[dict[str, Any]]:
        """The rows of a list answer, whether NocoDB wraps them in {"list": …} or not."""
        answer = self.call("GET", path)
        rows = answer.get("list", []) if isinstance(answer, dict) else answer
        return [dict(row) for row in rows or [] if isinstance(row, dict)]

    def sign_in(self, token: str, email: str, password: str) -> str:
        """Authenticate; returns who we are. A bad API token is answered as a guest."""
        if token:
            self.headers = {"xc-token": token}
        else:
            answer = self.call("POST", "/api/v1/auth/user/signin",
                               {"email": email, "password": password}, auth=False)
            session = answer.get("token") if isinstance(answer, dict) else None
            if not session:
                raise SetupFailure(EX_NOPERM, f"NocoDB did not sign in {email}")
            self.headers = {"xc-auth": session}
            self.session = True
        me = self.call("GET", "/api/v1/auth/user/me")
        if not isinstance(me, dict) or not me.get("id"):
            raise SetupFailure(EX_NOPERM, "NocoDB does not accept NOCODB_TOKEN (it answers as a "
                                          "guest): create a new API token")
        roles = me.get("roles") or {}
        if not (isinstance(roles, dict) and roles.get("super")):
            raise SetupFailure(EX_NOPERM, f"{me.get('email')} is not a NocoDB super admin: adding "
                                          "a data source needs one")
        return str(me.get("email") or me["id"])

    def wait_for_job(self, base_id: str, job_id: str, what: str, timeout: float) -> Any:
        """Poll NocoDB's background job until it ends; returns its result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.call("POST", f"/api/v2/jobs/{base_id}", {})
            for entry in jobs if isinstance(jobs, list) else []:
                if entry.get("id") != job_id:
                    continue
                if entry.get("status") == "completed":
                    return entry.get("result")
                if entry.get("status") == "failed":
                    result = entry.get("result")
                    detail = (result.get("error") or result.get("message")
                              if isinstance(result, dict) else result)
                    raise SetupFailure(EX_UNAVAILABLE, f"NocoDB failed to {what}: "
                                                       f"{self.scrub(str(detail or 'see its log'))}")
            time.sleep(0.5)
        raise SetupFailure(EX_UNAVAILABLE, f"NocoDB's job to {what} did not end within "
                                           f"{timeout:.0f} s (see NocoDB's log)")


def error_text(raw: bytes) -> str:
    """NocoDB's error message out of its JSON answer, or the start of the raw text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:300]
    if isinstance(body, dict):
        return str(body.get("msg") or body.get("message") or body.get("error") or body)[:300]
    return str(body)[:300]


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])
