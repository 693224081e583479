"""The database CA bundle, fetched inside AWS at deploy time (CloudFormation custom resource).

Create/Update download AWS's RDS CA bundle of this region (`Url`, over verified HTTPS from
truststore.pki.rds.amazonaws.com), check that it is a PEM bundle, and store one SSM parameter
per certificate under `Path` (`<Path>/0`, `<Path>/1`, ...: each certificate fits a standard
parameter, whatever the bundle's size), deleting any left from a longer bundle. The functions
read the path at their first database connection (covenant.db, `sslrootcert=ssm:<Path>`) and
verify Aurora's certificate and host name against it (sslmode=verify-full). Delete removes the
parameters. Nothing is fetched at synth time, and nothing but stdlib and boto3 is used, so the
function needs no layer and no VPC (it reaches the truststore over the internet).
"""

from __future__ import annotations

import re
import ssl
import urllib.request
from typing import Any

import boto3

PEM = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----")
ALLOWED_HOST = "https://truststore.pki.rds.amazonaws.com/"
MAX_BUNDLE_BYTES = 1024 * 1024


def certificates(bundle: str) -> list[str]:
    """The PEM certificates of `bundle`, in order; ValueError when there are none."""
    found = [match.group(0).replace("\r\n", "\n") + "\n" for match in PEM.finditer(bundle)]
    if not found:
        raise ValueError("the CA bundle holds no PEM certificate")
    for pem in found:
        ssl.create_default_context(cadata=pem)  # parses, or raises ssl.SSLError
    return found


def fetch(url: str) -> str:
    if not url.startswith(ALLOWED_HOST):
        raise ValueError(f"the CA bundle must come from {ALLOWED_HOST}, not {url}")
    context = ssl.create_default_context()  # the runtime's trust store; host name checked
    with urllib.request.urlopen(url, timeout=20, context=context) as response:  # noqa: S310
        body: bytes = response.read(MAX_BUNDLE_BYTES + 1)
    if len(body) > MAX_BUNDLE_BYTES:
        raise ValueError("the CA bundle is larger than 1 MiB")
    return body.decode("ascii")


def store(ssm: Any, path: str, pems: list[str]) -> None:
    for index, pem in enumerate(pems):
        ssm.put_parameter(
            Name=f"{path}/{index}",
            Value=pem,
            Type="String",
            Overwrite=True,
            Description="RDS CA certificate (Covenant database TLS, verify-full)",
        )
    _delete(ssm, path, keep=len(pems))


def _names(ssm: Any, path: str) -> list[str]:
    names: list[str] = []
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=path):
        names += [str(p["Name"]) for p in page.get("Parameters", [])]
    return names


def _delete(ssm: Any, path: str, keep: int) -> None:
    kept = {f"{path}/{i}" for i in range(keep)}
    extra = [name for name in _names(ssm, path) if name not in kept]
    for start in range(0, len(extra), 10):
        ssm.delete_parameters(Names=extra[start : start + 10])


def handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    props = event["ResourceProperties"]
    path = str(props["Path"])
    ssm = boto3.client("ssm")
    if event["RequestType"] == "Delete":
        _delete(ssm, path, keep=0)
    else:
        pems = certificates(fetch(str(props["Url"])))
        store(ssm, path, pems)
        print(f"stored {len(pems)} CA certificates under {path}")
    return {"PhysicalResourceId": f"covenant-database-ca{path}"}
