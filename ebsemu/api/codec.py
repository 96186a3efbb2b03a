"""The EC2 Query protocol codec: botocore's EC2 model, request parsing, XML responses."""

from __future__ import annotations

from functools import cache

from botocore.loaders import Loader
from botocore.model import ServiceModel

from ebsemu.api.query_parser import COMMON_PARAMS, parse_query
from ebsemu.api.xml_writer import ResultShapeError, serialize_error, serialize_response

__all__ = [
    "API_VERSION",
    "COMMON_PARAMS",
    "ResultShapeError",
    "ec2_model",
    "parse_query",
    "serialize_error",
    "serialize_response",
]

API_VERSION = "2016-11-15"


@cache
def ec2_model() -> ServiceModel:
    """botocore's EC2 service model (API 2016-11-15), loaded once."""
    data = Loader().load_service_model("ec2", "service-2", API_VERSION)
    return ServiceModel(data, service_name="ec2")
