"""EBS encryption settings actions: encryption by default and the default KMS key, per account
and region."""

from __future__ import annotations

from ebsemu.api.actions import Params, Result, Services, action
from ebsemu.service.context import RequestContext
from ebsemu.service.encryption import SSE_TYPE


@action
async def enable_ebs_encryption_by_default(svc: Services, ctx: RequestContext, p: Params) -> Result:
    return {"EbsEncryptionByDefault": await svc.encryption.set_by_default(ctx, True)}


@action
async def disable_ebs_encryption_by_default(
    svc: Services, ctx: RequestContext, p: Params
) -> Result:
    return {"EbsEncryptionByDefault": await svc.encryption.set_by_default(ctx, False)}


@action
async def get_ebs_encryption_by_default(svc: Services, ctx: RequestContext, p: Params) -> Result:
    return {"EbsEncryptionByDefault": await svc.encryption.by_default(ctx), "SseType": SSE_TYPE}


@action
async def get_ebs_default_kms_key_id(svc: Services, ctx: RequestContext, p: Params) -> Result:
    return {"KmsKeyId": await svc.encryption.default_key(ctx)}


@action
async def modify_ebs_default_kms_key_id(svc: Services, ctx: RequestContext, p: Params) -> Result:
    return {"KmsKeyId": await svc.encryption.modify_default_key(ctx, p["KmsKeyId"])}


@action
async def reset_ebs_default_kms_key_id(svc: Services, ctx: RequestContext, p: Params) -> Result:
    return {"KmsKeyId": await svc.encryption.reset_default_key(ctx)}
