"""AWS Signature Version 4 for EC2 Query form bodies, cheap enough to sign every call.

The signing key is derived once per (date, region); a call costs two SHA-256 and one HMAC over
short strings. The headers are those botocore signs for the same request (the smoke test checks
the signature against botocore's own signer).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field

CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
ALGORITHM = "AWS4-HMAC-SHA256"
SIGNED_HEADERS = "content-type;host;x-amz-date"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


@dataclass
class Signer:
    access_key: str
    secret_key: str
    region: str
    service: str = "ec2"
    _keys: dict[str, bytes] = field(default_factory=dict, repr=False)

    def signing_key(self, date: str) -> bytes:
        key = self._keys.get(date)
        if key is None:
            key = _hmac(("AWS4" + self.secret_key).encode(), date)
            for part in (self.region, self.service, "aws4_request"):
                key = _hmac(key, part)
            self._keys = {date: key}
        return key

    def headers(self, host: str, body: bytes, amz_date: str | None = None) -> dict[str, str]:
        """The headers of a signed ``POST /`` carrying ``body`` to ``host`` (host[:port])."""
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        date = amz_date[:8]
        canonical = "\n".join(
            [
                "POST",
                "/",
                "",
                f"content-type:{CONTENT_TYPE}",
                f"host:{host}",
                f"x-amz-date:{amz_date}",
                "",
                SIGNED_HEADERS,
                hashlib.sha256(body).hexdigest(),
            ]
        )
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join(
            [ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        signature = hmac.new(self.signing_key(date), to_sign.encode(), hashlib.sha256).hexdigest()
        return {
            "Content-Type": CONTENT_TYPE,
            "X-Amz-Date": amz_date,
            "Authorization": f"{ALGORITHM} Credential={self.access_key}/{scope}, "
            f"SignedHeaders={SIGNED_HEADERS}, Signature={signature}",
        }
