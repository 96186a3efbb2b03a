"""KMS key identifiers as EC2 takes them, without a KMS behind them.

EC2 accepts a key id, a key ARN, an alias name (``alias/…``) or an alias ARN, and reports the key
of a volume or snapshot as a key ARN. ebsemu has no KMS: a well-formed identifier names a key,
which holds no key material (data keys are wrapped by the local master key, see
ebsemu/keyvault.py) and is recorded only to be reported. An alias stands for a key id derived
from the account, the region and the alias, so it names the same key every time; the default
alias ``alias/aws/ebs`` is the account's AWS managed EBS key.
"""

from __future__ import annotations

import re
import uuid

from ebsemu import errors

DEFAULT_ALIAS = "alias/aws/ebs"
_NAMESPACE = uuid.UUID("5d1c7a52-8f0e-4c55-9b0e-2f6d0d5e8a11")
_KEY_ID = r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
_ALIAS = r"alias/[A-Za-z0-9/_-]{1,250}"
_ARN_PREFIX = r"arn:aws(?:-cn|-us-gov)?:kms:(?P<region>[a-z0-9-]{1,32}):(?P<account>\d{12}):"
KEY_ID = re.compile(_KEY_ID)
ALIAS_NAME = re.compile(_ALIAS)
KEY_ARN = re.compile(_ARN_PREFIX + r"key/(?P<key>" + _KEY_ID + ")")
ALIAS_ARN = re.compile(_ARN_PREFIX + r"(?P<alias>" + _ALIAS + ")")


def key_arn(text: str, *, account_id: str, region: str) -> str:
    """The ARN of the key ``text`` names, in the caller's account and region unless an ARN says
    otherwise; InvalidParameterValue for anything else, or for a key in another region."""
    if KEY_ID.fullmatch(text):
        return _arn(region, account_id, text)
    if ALIAS_NAME.fullmatch(text):
        return _arn(region, account_id, _alias_key(account_id, region, text))
    match = KEY_ARN.fullmatch(text) or ALIAS_ARN.fullmatch(text)
    if match is None:
        raise errors.InvalidParameterValue(
            f"Value ({text[:256]}) for parameter KmsKeyId is invalid. Expecting a KMS key id, "
            "key ARN, alias name (alias/…) or alias ARN."
        )
    if match["region"] != region:
        raise errors.InvalidParameterValue(
            f"The KMS key {text[:256]} is in region {match['region']}, not in {region}."
        )
    if "key" in match.groupdict():
        return text
    return _arn(region, match["account"], _alias_key(match["account"], region, match["alias"]))


def default_key_arn(account_id: str, region: str) -> str:
    """The ARN of the account's AWS managed EBS key (``alias/aws/ebs``) in the region."""
    return key_arn(DEFAULT_ALIAS, account_id=account_id, region=region)


def _alias_key(account_id: str, region: str, alias: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{account_id}:{region}:{alias}"))


def _arn(region: str, account_id: str, key_id: str) -> str:
    return f"arn:aws:kms:{region}:{account_id}:key/{key_id}"
